"""`selkie projects …` and `selkie set-context`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from selkie.cli.common import (
    ConfigOpt,
    NoWaitOpt,
    Output,
    OutputOpt,
    ProjectIdOpt,
    TimeoutOpt,
    client,
    context_path,
    emit,
    note,
    project_id,
    read_context,
    usage_error,
    wait,
    write_context,
)

app = typer.Typer(no_args_is_help=True, help="Projects.")

COLUMNS = ["id", "name", "org_id", "region_id", "created_at"]
ProjectArg = Annotated[str, typer.Argument(help="Project id")]
MinCuOpt = Annotated[
    float | None, typer.Option("--min-cu", help="Default autoscaling minimum of new endpoints")
]
MaxCuOpt = Annotated[
    float | None, typer.Option("--max-cu", help="Default autoscaling maximum of new endpoints")
]
SuspendOpt = Annotated[
    int | None,
    typer.Option("--suspend-timeout", help="Default idle seconds before a suspend (0: never)"),
]


def _endpoint_defaults(
    min_cu: float | None, max_cu: float | None, suspend: int | None
) -> dict[str, Any] | None:
    spec = {
        "autoscaling_limit_min_cu": min_cu,
        "autoscaling_limit_max_cu": max_cu,
        "suspend_timeout_seconds": suspend,
    }
    chosen = {k: v for k, v in spec.items() if v is not None}
    return chosen or None


@app.command("list")
def projects_list(
    search: Annotated[str | None, typer.Option("--search", help="Names containing")] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    with client(config) as c:
        emit(c.list_all("/v1/projects", "projects", search=search), output, COLUMNS)


@app.command("create")
def projects_create(
    name: Annotated[str | None, typer.Argument(help="Project name")] = None,
    name_opt: Annotated[str | None, typer.Option("--name", help="Project name")] = None,
    min_cu: MinCuOpt = None,
    max_cu: MaxCuOpt = None,
    suspend_timeout: SuspendOpt = None,
    set_context: Annotated[
        bool, typer.Option("--set-context", help="Remember it as the current project")
    ] = False,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a project with a main branch, an endpoint, a role and a database; prints the
    connection URI with the owner's password (shown once). json/yaml: the whole answer."""
    spec: dict[str, Any] = {"name": name or name_opt} if (name or name_opt) else {}
    defaults = _endpoint_defaults(min_cu, max_cu, suspend_timeout)
    if defaults:
        spec["default_endpoint_settings"] = defaults
    with client(config) as c:
        body = c.post("/v1/projects", {"project": spec})
        pid = body["project"]["id"]
        wait(c, pid, body["operations"], "creating the project", no_wait=no_wait, timeout=timeout)
    if set_context:
        write_context({**read_context(), "project_id": pid})
    if output is not Output.table:
        emit(body, output)
        return
    emit(body["project"], output, COLUMNS)
    note(f"connection URI: {body['connection_uris'][0]['connection_uri']}", output)


@app.command("get")
def projects_get(
    project: Annotated[str | None, typer.Argument(help="Project id")] = None,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A project (default: the context's)."""
    pid = project_id(project, project_opt)
    with client(config) as c:
        emit(c.get(f"/v1/projects/{pid}")["project"], output, COLUMNS)


@app.command("update")
def projects_update(
    project: ProjectArg,
    name: Annotated[str | None, typer.Option("--name", help="New name")] = None,
    min_cu: MinCuOpt = None,
    max_cu: MaxCuOpt = None,
    suspend_timeout: SuspendOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Rename a project or change the settings its new endpoints get."""
    spec: dict[str, Any] = {"name": name} if name else {}
    defaults = _endpoint_defaults(min_cu, max_cu, suspend_timeout)
    if defaults:
        spec["default_endpoint_settings"] = defaults
    if not spec:
        usage_error("nothing to change: pass --name, --min-cu, --max-cu…")
    with client(config) as c:
        body = c.patch(f"/v1/projects/{project}", {"project": spec})
    emit(body["project"], output, COLUMNS)


@app.command("delete")
def projects_delete(
    project: ProjectArg,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Delete a project: its computes are stopped and its data removed."""
    with client(config) as c:
        body = c.delete(f"/v1/projects/{project}")
        wait(
            c,
            project,
            body.get("operations", []),
            "deleting the project",
            no_wait=no_wait,
            timeout=timeout,
            gone_ok=True,
        )
    emit(body["project"], output, COLUMNS)


def set_context(
    project: Annotated[
        str | None,
        typer.Option("--project-id", "--project", help="Project the next commands are about"),
    ] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Remember a project for the next commands (in SELKIE_CONTEXT_FILE, by default
    ~/.config/selkie/context.json). Without --project-id: forget it."""
    if project:
        # Checked first: a typo should not become the context of every later command.
        with client(config) as c:
            c.get(f"/v1/projects/{project}")
    data = {**read_context(), "project_id": project} if project else {}
    path = write_context({k: v for k, v in data.items() if v})
    context = {"project_id": project, "context_file": str(path)}
    if output is Output.table:
        note(
            f"project {project} is the context ({path})"
            if project
            else f"context cleared ({context_path()})",
            output,
        )
        return
    emit(context, output)
