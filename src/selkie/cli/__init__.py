"""The `selkie` command line.

`selkie up` runs the platform; `selkie api-keys create` works directly on the local state
store (no server needed); the other commands talk to the REST API at ``SELKIE_API_URL`` with
``SELKIE_API_KEY``. Every command takes ``-o table|json|yaml``; commands about a project take
``--project-id`` or use the one ``selkie set-context`` remembered. Exit codes: 0 done, 1 the
API refused or failed the request, 2 bad usage or configuration (see
:mod:`selkie.cli.common`).
"""

from __future__ import annotations

import typer

from selkie.cli import (
    billing,
    branches,
    connect,
    endpoints,
    operations,
    projects,
    roles,
    server,
    settings,
    sql,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,
    help="Serverless MariaDB. Exit codes: 0 done, 1 API or user error, 2 usage or config error.",
)

app.command()(server.up)
app.command()(server.api)
app.command()(server.proxy)
app.command()(server.safekeeper)
app.add_typer(server.keys_app, name="api-keys")
app.add_typer(server.archive_app, name="archive")
app.add_typer(projects.app, name="projects")
app.add_typer(branches.app, name="branches")
app.add_typer(endpoints.app, name="endpoints")
app.add_typer(roles.roles_app, name="roles")
app.add_typer(roles.databases_app, name="databases")
app.add_typer(operations.app, name="operations")
app.command("set-context")(projects.set_context)
app.command("connection-string")(connect.connection_string)
app.command("connect", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    connect.connect
)
app.command("config")(settings.config)
app.command("sql")(sql.sql)
app.command("usage")(billing.usage)
app.command("invoice")(billing.invoice)


def main() -> None:
    app(prog_name="selkie")


__all__ = ["app", "main"]
