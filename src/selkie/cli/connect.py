"""`selkie connection-string` and `selkie connect`: an endpoint's address through the proxy,
and the `mariadb` client started on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Annotated, Any

import typer

from selkie.cli.common import (
    EXIT_USAGE,
    BranchOpt,
    ConfigOpt,
    Output,
    OutputOpt,
    ProjectIdOpt,
    client,
    emit,
    fail,
    project_id,
    resolve_branch,
)
from selkie.client import SelkieClient
from selkie.errors import SelkieError

RoleOpt = Annotated[
    str | None, typer.Option("--role", help="Role name (default: the branch's first)")
]
DatabaseOpt = Annotated[
    str | None, typer.Option("--database", help="Database name (default: the branch's first)")
]
EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint", help="Endpoint id (default: the branch's read-write endpoint)"),
]
PooledOpt = Annotated[bool, typer.Option("--pooled", help="Through the pooler")]


def endpoint_uri(
    c: SelkieClient,
    pid: str,
    *,
    role: str | None,
    database: str | None,
    branch: str | None,
    endpoint: str | None,
    pooled: bool,
) -> dict[str, Any]:
    """The connection_uri answer; role and database default to the branch's first ones."""
    branch_id = resolve_branch(c, pid, branch) if branch or not endpoint else None
    if role is None or database is None:
        if branch_id is None:
            ep = c.get(f"/v1/projects/{pid}/endpoints/{endpoint}")["endpoint"]
            branch_id = str(ep["branch_id"])
        base = f"/v1/projects/{pid}/branches/{branch_id}"
        if role is None:
            roles = c.get(f"{base}/roles")["roles"]
            if not roles:
                raise SelkieError("the branch has no roles; pass --role")
            role = str(roles[0]["name"])
        if database is None:
            dbs = c.get(f"{base}/databases")["databases"]
            if not dbs:
                raise SelkieError("the branch has no databases; pass --database")
            database = str(dbs[0]["name"])
    body: dict[str, Any] = c.get(
        f"/v1/projects/{pid}/connection_uri",
        role_name=role,
        database_name=database,
        branch_id=branch_id,
        endpoint_id=endpoint,
        pooled=str(pooled).lower(),
    )
    return body


def connection_string(
    project: Annotated[str | None, typer.Argument(help="Project id (or --project-id)")] = None,
    project_opt: ProjectIdOpt = None,
    role: RoleOpt = None,
    database: DatabaseOpt = None,
    branch: BranchOpt = None,
    endpoint: EndpointOpt = None,
    pooled: PooledOpt = False,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Print the proxy URI of a project's endpoint (defaults: the default branch, its first
    role and database). Passwords are never stored, so the URI has none. table: the URI
    alone; json/yaml: the URI and its parts."""
    pid = project_id(project, project_opt)
    with client(config) as c:
        body = endpoint_uri(
            c, pid, role=role, database=database, branch=branch, endpoint=endpoint, pooled=pooled
        )
    if output is Output.table:
        typer.echo(body["uri"])
    else:
        emit(body, output)


def _defaults_file(password: str) -> str:
    """A client option file holding the password, readable by this user only (mkstemp
    creates it 0600); the caller deletes it."""
    if "\n" in password or "\r" in password:
        fail("a password cannot contain a line break", EXIT_USAGE)
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    fd, path = tempfile.mkstemp(prefix="selkie-connect-", suffix=".cnf")
    with os.fdopen(fd, "w") as f:
        f.write(f'[client]\npassword="{escaped}"\n')
    return path


def connect(
    ctx: typer.Context,
    project_opt: ProjectIdOpt = None,
    role: RoleOpt = None,
    database: DatabaseOpt = None,
    branch: BranchOpt = None,
    endpoint: EndpointOpt = None,
    pooled: PooledOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run the `mariadb` client on the endpoint (through the proxy), asking for the role's
    password. Arguments after `--` go to the client (e.g. `-- -e 'SELECT 1'`). The
    password reaches the client in a temporary option file, never on its command line.
    The exit status is the client's."""
    pid = project_id(None, project_opt)
    binary = shutil.which("mariadb") or shutil.which("mysql")
    if binary is None:
        fail("the mariadb client is not on PATH (apt-get install mariadb-client)", EXIT_USAGE)
    with client(config) as c:
        body = endpoint_uri(
            c, pid, role=role, database=database, branch=branch, endpoint=endpoint, pooled=pooled
        )
    params = body["connection_parameters"]
    password = typer.prompt(f"Password for {params['role']}", hide_input=True)
    path = _defaults_file(password)
    try:
        # --defaults-extra-file must come first; the client reads it at start.
        argv = [
            binary,
            f"--defaults-extra-file={path}",
            f"--host={params['host']}",
            f"--port={params['port']}",
            f"--user={params['user']}",
            f"--database={params['database']}",
            *ctx.args,
        ]
        code = subprocess.call(argv)
    finally:
        os.unlink(path)
    raise typer.Exit(code)
