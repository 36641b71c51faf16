"""`selkie operations list|get`: a project's operations log."""

from __future__ import annotations

from typing import Annotated

import typer

from selkie.cli.common import (
    ConfigOpt,
    Output,
    OutputOpt,
    ProjectIdOpt,
    client,
    emit,
    project_id,
    split_ids,
)

app = typer.Typer(no_args_is_help=True, help="The operations log of a project.")

COLUMNS = [
    "id",
    "action",
    "status",
    "branch_id",
    "endpoint_id",
    "failures_count",
    "error",
    "total_duration_ms",
    "created_at",
]


@app.command("list")
def operations_list(
    project: Annotated[str | None, typer.Argument(help="Project id (or --project-id)")] = None,
    project_opt: ProjectIdOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many (newest first)", min=1)
    ] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A project's operations, newest first."""
    pid = project_id(project, project_opt)
    path = f"/v1/projects/{pid}/operations"
    with client(config) as c:
        ops = c.list_all(path, "operations")
    # The API pages oldest first; people (and neonctl) read the latest first.
    ops.sort(key=lambda op: (op["created_at"], op["id"]), reverse=True)
    emit(ops[:limit] if limit is not None else ops, output, COLUMNS)


@app.command("get")
def operations_get(
    ids: Annotated[
        list[str],
        typer.Argument(
            metavar="[PROJECT_ID] OPERATION_ID",
            help="Operation id (a project id before it is the same as --project-id)",
            show_default=False,
        ),
    ],
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid, (operation_id,) = split_ids(ids, ["OPERATION_ID"], project_opt)
    with client(config) as c:
        emit(c.get(f"/v1/projects/{pid}/operations/{operation_id}")["operation"], output, COLUMNS)
