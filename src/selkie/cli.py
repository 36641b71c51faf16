"""The `selkie` command line.

`selkie up` runs the platform; `selkie api-keys create` works directly on the local state
store (no server needed); the other commands talk to the REST API at ``SELKIE_API_URL`` with
``SELKIE_API_KEY``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from selkie.client import SelkieClient
from selkie.config import Settings, load_settings
from selkie.errors import SelkieError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Serverless MariaDB.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (local store, no server needed).")
projects_app = typer.Typer(no_args_is_help=True, help="Projects.")
endpoints_app = typer.Typer(no_args_is_help=True, help="Endpoints (computes).")
branches_app = typer.Typer(no_args_is_help=True, help="Branches: copies of a branch, at once.")
app.add_typer(keys_app, name="api-keys")
app.add_typer(projects_app, name="projects")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(branches_app, name="branches")

# Piped output is not cut at 80 columns: ids are long and scripts read the tables too.
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)


class Output(StrEnum):
    table = "table"
    json = "json"


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (or SELKIE_CONFIG)")
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config_file=config)
    except SelkieError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


@contextmanager
def _failures() -> Iterator[None]:
    """Selkie errors become one red line and exit status 1, not a traceback."""
    try:
        yield
    except SelkieError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from exc


@contextmanager
def _client(config: Path | None) -> Iterator[SelkieClient]:
    settings = _settings(config)
    if not settings.api_key:
        err.print(
            "[red]error:[/red] no API key: set SELKIE_API_KEY (selkie up prints one on first "
            "start; `selkie api-keys create --name NAME` makes another)"
        )
        raise typer.Exit(2)
    with _failures(), SelkieClient(settings.effective_api_url, settings.api_key) as client:
        yield client


def _emit(data: Any, output: Output, columns: list[str] | None = None) -> None:
    if output is Output.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    if columns is None:
        columns = list(rows[0].keys()) if rows else []
    table = Table(*columns, show_lines=False)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


# --- server ---------------------------------------------------------------------------------


@app.command()
def up(config: ConfigOpt = None) -> None:
    """Run the whole platform in this process (API, proxy, scheduler). Ctrl-C stops."""
    from selkie.serve import banner, serve

    settings = _settings(config)
    _run_server(settings, serve(settings, on_ready=lambda first: print(banner(settings, first))))


def _run_server(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Logging as configured, then ``main`` on the configured event loop until Ctrl-C."""
    import logging

    from selkie import eventloop

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with _failures(), suppress(KeyboardInterrupt):
        eventloop.run(main, settings.event_loop)


@app.command()
def api(config: ConfigOpt = None) -> None:
    """Run an API replica: REST API, operations runner, scheduler (one leader among the
    replicas on a PostgreSQL store) and, with SELKIE_INTERNAL_TOKEN, the internal routes
    that `selkie proxy` replicas use. No proxy; computes keep running when it stops."""

    from selkie.serve import serve

    settings = _settings(config)

    def ready(_: object) -> None:
        print(f"Selkie API replica on {settings.effective_api_url}", flush=True)

    _run_server(settings, serve(settings, proxy=False, on_ready=ready))


@app.command()
def proxy(config: ConfigOpt = None) -> None:
    """Run the MySQL-protocol proxy alone. With SELKIE_INTERNAL_TOKEN and SELKIE_API_URL
    (comma-separated for several), a replica asking `selkie api` replicas; otherwise with
    an in-process control plane on the state store. Ctrl-C stops."""
    from selkie.serve import serve_proxy

    settings = _settings(config)
    _run_server(settings, serve_proxy(settings))


# --- api keys -------------------------------------------------------------------------------


@keys_app.command("create")
def api_keys_create(
    name: Annotated[str, typer.Option("--name", help="A name for the key")],
    org: Annotated[str | None, typer.Option("--org", help="Organization id")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May manage organizations")] = False,
    config: ConfigOpt = None,
) -> None:
    """Create an API key in the local state store and print it alone on stdout."""
    from selkie.control import Control
    from selkie.control.bootstrap import local_principal
    from selkie.store import Store

    settings = _settings(config)
    with _failures():
        store = Store(settings.effective_database_url)
        try:
            control = Control.open(store, settings)
            _, secret = control.api_keys.create(
                local_principal(control), name=name, org_id=org, admin=admin
            )
        finally:
            store.close()
    sys.stdout.write(secret + "\n")


# --- projects -------------------------------------------------------------------------------

PROJECT_COLUMNS = ["id", "name", "org_id", "region_id", "created_at"]


@projects_app.command("list")
def projects_list(config: ConfigOpt = None, output: OutputOpt = Output.table) -> None:
    with _client(config) as c:
        _emit(c.list_all("/v1/projects", "projects"), output, PROJECT_COLUMNS)


@projects_app.command("create")
def projects_create(
    name: Annotated[str | None, typer.Argument(help="Project name")] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a project; prints its connection URI with the owner's password (shown once)."""
    with _client(config) as c:
        body = c.post("/v1/projects", {"project": {"name": name} if name else {}})
    if output is Output.json:
        _emit(body, output)
        return
    _emit(body["project"], output, PROJECT_COLUMNS)
    out.print(f"connection URI: {body['connection_uris'][0]['connection_uri']}", highlight=False)


@projects_app.command("get")
def projects_get(
    project_id: str, config: ConfigOpt = None, output: OutputOpt = Output.table
) -> None:
    with _client(config) as c:
        _emit(c.get(f"/v1/projects/{project_id}")["project"], output, PROJECT_COLUMNS)


@projects_app.command("delete")
def projects_delete(
    project_id: str, config: ConfigOpt = None, output: OutputOpt = Output.table
) -> None:
    with _client(config) as c:
        _emit(c.delete(f"/v1/projects/{project_id}")["project"], output, PROJECT_COLUMNS)


# --- endpoints ------------------------------------------------------------------------------

ENDPOINT_COLUMNS = [
    "id",
    "branch_id",
    "current_state",
    "pending_state",
    "autoscaling_limit_min_cu",
    "autoscaling_limit_max_cu",
    "current_cu",
    "suspend_timeout_seconds",
    "last_active",
    "started_at",
    "suspended_at",
]


@endpoints_app.command("list")
def endpoints_list(
    project_id: str, config: ConfigOpt = None, output: OutputOpt = Output.table
) -> None:
    with _client(config) as c:
        _emit(
            c.list_all(f"/v1/projects/{project_id}/endpoints", "endpoints"),
            output,
            ENDPOINT_COLUMNS,
        )


def _endpoint_action(project_id: str, endpoint_id: str, action: str, config: Path | None) -> Any:
    with _client(config) as c:
        return c.post(f"/v1/projects/{project_id}/endpoints/{endpoint_id}/{action}")


@endpoints_app.command("start")
def endpoints_start(
    project_id: str, endpoint_id: str, config: ConfigOpt = None, output: OutputOpt = Output.table
) -> None:
    _emit(
        _endpoint_action(project_id, endpoint_id, "start", config)["endpoint"],
        output,
        ENDPOINT_COLUMNS,
    )


@endpoints_app.command("suspend")
def endpoints_suspend(
    project_id: str, endpoint_id: str, config: ConfigOpt = None, output: OutputOpt = Output.table
) -> None:
    _emit(
        _endpoint_action(project_id, endpoint_id, "suspend", config)["endpoint"],
        output,
        ENDPOINT_COLUMNS,
    )


# --- branches -------------------------------------------------------------------------------

BRANCH_COLUMNS = [
    "id",
    "name",
    "parent_id",
    "default",
    "protected",
    "current_state",
    "logical_size",
    "parent_timestamp",
    "parent_lsn",
    "created_at",
]
Project = Annotated[str, typer.Argument(help="Project id")]
Branch = Annotated[str, typer.Argument(help="Branch id")]


def _branches(project_id: str) -> str:
    return f"/v1/projects/{project_id}/branches"


@branches_app.command("list")
def branches_list(
    project_id: Project, config: ConfigOpt = None, output: OutputOpt = Output.table
) -> None:
    with _client(config) as c:
        _emit(c.list_all(_branches(project_id), "branches"), output, BRANCH_COLUMNS)


@branches_app.command("create")
def branches_create(
    project_id: Project,
    name: Annotated[str | None, typer.Option("--name", help="Branch name")] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Parent branch id")] = None,
    timestamp: Annotated[
        str | None, typer.Option("--timestamp", help="The parent as of this time (RFC 3339)")
    ] = None,
    lsn: Annotated[str | None, typer.Option("--lsn", help="…or this GTID (0-1-N)")] = None,
    endpoint: Annotated[bool, typer.Option(help="With a read-write endpoint")] = True,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A new branch: a copy of its parent (the default branch unless --parent), now or at a
    point in its history."""
    spec = {"name": name, "parent_id": parent, "parent_timestamp": timestamp, "parent_lsn": lsn}
    body: dict[str, Any] = {"branch": {k: v for k, v in spec.items() if v is not None}}
    if endpoint:
        body["endpoints"] = [{"type": "read_write"}]
    with _client(config) as c:
        created = c.post(_branches(project_id), body)
    _emit(created if output is Output.json else created["branch"], output, BRANCH_COLUMNS)


@branches_app.command("get")
def branches_get(
    project_id: Project,
    branch_id: Branch,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    with _client(config) as c:
        _emit(c.get(f"{_branches(project_id)}/{branch_id}")["branch"], output, BRANCH_COLUMNS)


@branches_app.command("rename")
def branches_rename(
    project_id: Project,
    branch_id: Branch,
    name: Annotated[str, typer.Argument(help="New name")],
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    with _client(config) as c:
        body = c.patch(f"{_branches(project_id)}/{branch_id}", {"branch": {"name": name}})
    _emit(body["branch"], output, BRANCH_COLUMNS)


@branches_app.command("protect")
def branches_protect(
    project_id: Project,
    branch_id: Branch,
    off: Annotated[bool, typer.Option("--off", help="Unprotect")] = False,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Protect a branch from deletion and restores (--off: allow them again)."""
    with _client(config) as c:
        body = c.patch(f"{_branches(project_id)}/{branch_id}", {"branch": {"protected": not off}})
    _emit(body["branch"], output, BRANCH_COLUMNS)


@branches_app.command("delete")
def branches_delete(
    project_id: Project,
    branch_id: Branch,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    with _client(config) as c:
        _emit(c.delete(f"{_branches(project_id)}/{branch_id}")["branch"], output, BRANCH_COLUMNS)


@branches_app.command("restore")
def branches_restore(
    project_id: Project,
    branch_id: Branch,
    source: Annotated[str, typer.Option("--source", help="Branch whose data to take")],
    timestamp: Annotated[str | None, typer.Option("--timestamp", help="As of (RFC 3339)")] = None,
    lsn: Annotated[str | None, typer.Option("--lsn", help="As of this GTID")] = None,
    preserve_under_name: Annotated[
        str | None, typer.Option("--preserve-under-name", help="Keep the replaced data")
    ] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Replace the branch's data with --source's (itself: go back in time)."""
    spec = {
        "source_branch_id": source,
        "source_timestamp": timestamp,
        "source_lsn": lsn,
        "preserve_under_name": preserve_under_name,
    }
    with _client(config) as c:
        body = c.post(
            f"{_branches(project_id)}/{branch_id}/restore",
            {k: v for k, v in spec.items() if v is not None},
        )
    _emit(body["branch"], output, BRANCH_COLUMNS)


@branches_app.command("reset")
def branches_reset(
    project_id: Project,
    branch_id: Branch,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Reset a branch to its parent's latest state (its own changes are dropped)."""
    with _client(config) as c:
        parent = c.get(f"{_branches(project_id)}/{branch_id}")["branch"]["parent_id"]
        if not parent:
            err.print("[red]error:[/red] the branch has no parent to reset from")
            raise typer.Exit(1)
        body = c.post(f"{_branches(project_id)}/{branch_id}/restore", {"source_branch_id": parent})
    _emit(body["branch"], output, BRANCH_COLUMNS)


@branches_app.command("set-default")
def branches_set_default(
    project_id: Project,
    branch_id: Branch,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    with _client(config) as c:
        body = c.post(f"{_branches(project_id)}/{branch_id}/set_as_default")
    _emit(body["branch"], output, BRANCH_COLUMNS)


@branches_app.command("schema-diff")
def branches_schema_diff(
    project_id: Project,
    branch_id: Branch,
    base: Annotated[str, typer.Option("--base", help="Branch to compare with")],
    database: Annotated[str, typer.Option("--database", "-d", help="Database name")],
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The schema of DATABASE on --base and on BRANCH as a unified diff (both woken)."""
    with _client(config) as c:
        body = c.get(
            f"{_branches(project_id)}/{branch_id}/compare_schema",
            base_branch_id=base,
            db_name=database,
        )
    if output is Output.json:
        _emit(body, output)
    else:
        sys.stdout.write(body["diff"] or "(no difference)\n")


# --- usage --------------------------------------------------------------------------------


@app.command("usage")
def usage(project_id: str, config: ConfigOpt = None, output: OutputOpt = Output.table) -> None:
    """A project's usage this calendar month (UTC) so far, storage now, and its quotas."""
    with _client(config) as c:
        body = c.get(f"/v1/projects/{project_id}/usage")
    if output is Output.json:
        _emit(body, output)
        return
    quota = body["quota"]
    rows = [
        ("active time", f"{body['active_time_seconds']:,.1f} s", ""),
        (
            "compute time",
            f"{body['compute_time_seconds']:,.1f} CU-s",
            _limit(quota["compute_time_limit_seconds"], "CU-s"),
        ),
        ("written data", f"{body['written_data_bytes']:,} B", ""),
        ("data transfer", f"{body['data_transfer_bytes']:,} B", ""),
        ("storage", f"{body['data_storage_bytes_hour']:,.1f} B-h", ""),
        ("restore history", f"{body['instant_restore_bytes_hour']:,.1f} B-h", ""),
        ("storage now", f"{body['storage_bytes']:,} B", _limit(quota["storage_limit_bytes"], "B")),
    ]
    table = Table(
        "",
        "used",
        "limit",
        title=f"{project_id}: {body['period_start'][:10]} to now (plan {body['plan']})",
    )
    for row in rows:
        table.add_row(*row)
    out.print(table)
    for why in quota["exceeded"]:
        out.print(f"[red]quota exceeded:[/red] {why}")


def _limit(value: int | None, unit: str) -> str:
    return "" if value is None else f"{value:,} {unit}"


@app.command("invoice")
def invoice(
    project_id: str,
    period: Annotated[
        str | None, typer.Argument(help="Month as YYYY-MM (default: this month)")
    ] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A project's invoice for a calendar month, priced by its plan."""
    period = period or datetime.now(UTC).strftime("%Y-%m")
    with _client(config) as c:
        body = c.get(f"/v1/projects/{project_id}/invoices/{period}")["invoice"]
    if output is Output.json:
        _emit(body, output)
        return
    cur = body["currency"]
    table = Table(
        "item",
        "quantity",
        "included",
        "billable",
        "unit price",
        f"amount ({cur})",
        title=f"{project_id} {body['period']} (plan {body['plan']}, {body['status']})",
    )
    for x in body["line_items"]:
        table.add_row(
            x["description"],
            f"{x['quantity']} {x['unit']}",
            x["included"],
            x["billable"],
            x["unit_price"],
            x["amount"],
        )
    table.add_row("total", "", "", "", "", body["total"])
    out.print(table)


# --- connection strings ---------------------------------------------------------------------


@app.command("connection-string")
def connection_string(
    project_id: str,
    role: Annotated[str | None, typer.Option("--role", help="Role name")] = None,
    database: Annotated[str | None, typer.Option("--database", help="Database name")] = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Branch id")] = None,
    pooled: Annotated[bool, typer.Option("--pooled", help="Through the pooler")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print the proxy URI of a project's endpoint (defaults: the default branch, its first
    role and database). Passwords are never stored, so the URI has none."""
    with _client(config) as c:
        if role is None or database is None:
            branches = c.list_all(f"/v1/projects/{project_id}/branches", "branches")
            target = branch or next(b["id"] for b in branches if b["default"])
            if role is None:
                roles = c.get(f"/v1/projects/{project_id}/branches/{target}/roles")["roles"]
                if not roles:
                    raise SelkieError("the branch has no roles; pass --role")
                role = roles[0]["name"]
            if database is None:
                dbs = c.get(f"/v1/projects/{project_id}/branches/{target}/databases")["databases"]
                if not dbs:
                    raise SelkieError("the branch has no databases; pass --database")
                database = dbs[0]["name"]
            branch = target
        body = c.get(
            f"/v1/projects/{project_id}/connection_uri",
            role_name=role,
            database_name=database,
            branch_id=branch,
            pooled=str(pooled).lower(),
        )
    sys.stdout.write(body["uri"] + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
