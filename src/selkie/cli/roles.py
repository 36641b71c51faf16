"""`selkie roles …` and `selkie databases …` of a branch (the default branch unless
--branch)."""

from __future__ import annotations

from typing import Annotated

import typer

from selkie.cli.common import (
    BranchOpt,
    ConfigOpt,
    NoWaitOpt,
    Output,
    OutputOpt,
    ProjectIdOpt,
    TimeoutOpt,
    client,
    emit,
    note,
    project_id,
    resolve_branch,
    wait,
)
from selkie.client import SelkieClient
from selkie.errors import SelkieError

roles_app = typer.Typer(no_args_is_help=True, help="Roles (database users) of a branch.")
databases_app = typer.Typer(no_args_is_help=True, help="Databases of a branch.")

ROLE_COLUMNS = ["name", "branch_id", "protected", "created_at"]
DATABASE_COLUMNS = ["name", "owner_name", "branch_id", "created_at"]
RoleArg = Annotated[str, typer.Argument(help="Role name")]
DatabaseArg = Annotated[str, typer.Argument(help="Database name")]


def _base(c: SelkieClient, pid: str, branch: str | None) -> str:
    return f"/v1/projects/{pid}/branches/{resolve_branch(c, pid, branch)}"


def _emit_with_password(role: dict[str, str], output: Output) -> None:
    """The role; its password (shown this once) in the table and in json/yaml."""
    emit(role, output, ROLE_COLUMNS)
    note(f"password (shown once): {role['password']}", output)


@roles_app.command("list")
def roles_list(
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid = project_id(None, project_opt)
    with client(config) as c:
        base = _base(c, pid, branch)
        emit(c.get(f"{base}/roles")["roles"], output, ROLE_COLUMNS)


@roles_app.command("create")
def roles_create(
    name: RoleArg,
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a role with a generated password, printed this once."""
    pid = project_id(None, project_opt)
    with client(config) as c:
        base = _base(c, pid, branch)
        body = c.post(f"{base}/roles", {"role": {"name": name}})
        wait(c, pid, body["operations"], "creating the role", no_wait=no_wait, timeout=timeout)
    _emit_with_password(body["role"], output)


@roles_app.command("reset-password")
def roles_reset_password(
    name: RoleArg,
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Give a role a new generated password, printed this once (the old one stops working
    when the operation has run)."""
    pid = project_id(None, project_opt)
    with client(config) as c:
        base = _base(c, pid, branch)
        body = c.post(f"{base}/roles/{name}/reset_password")
        wait(c, pid, body["operations"], "resetting the password", no_wait=no_wait, timeout=timeout)
    _emit_with_password(body["role"], output)


@roles_app.command("delete")
def roles_delete(
    name: RoleArg,
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid = project_id(None, project_opt)
    with client(config) as c:
        base = _base(c, pid, branch)
        body = c.delete(f"{base}/roles/{name}")
        wait(c, pid, body["operations"], "deleting the role", no_wait=no_wait, timeout=timeout)
    emit(body["role"], output, ROLE_COLUMNS)


@databases_app.command("list")
def databases_list(
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid = project_id(None, project_opt)
    with client(config) as c:
        base = _base(c, pid, branch)
        emit(c.get(f"{base}/databases")["databases"], output, DATABASE_COLUMNS)


@databases_app.command("create")
def databases_create(
    name: DatabaseArg,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Owning role (default: the branch's first)")
    ] = None,
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid = project_id(None, project_opt)
    with client(config) as c:
        base = _base(c, pid, branch)
        if owner is None:
            roles = c.get(f"{base}/roles")["roles"]
            if not roles:
                raise SelkieError("the branch has no roles; create one, then pass --owner")
            owner = str(roles[0]["name"])
        body = c.post(f"{base}/databases", {"database": {"name": name, "owner_name": owner}})
        wait(c, pid, body["operations"], "creating the database", no_wait=no_wait, timeout=timeout)
    emit(body["database"], output, DATABASE_COLUMNS)


@databases_app.command("delete")
def databases_delete(
    name: DatabaseArg,
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid = project_id(None, project_opt)
    with client(config) as c:
        base = _base(c, pid, branch)
        body = c.delete(f"{base}/databases/{name}")
        wait(c, pid, body["operations"], "deleting the database", no_wait=no_wait, timeout=timeout)
    emit(body["database"], output, DATABASE_COLUMNS)
