"""`selkie branches …`: copies of a branch, now or at a point in its history."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
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
    emit,
    fail,
    finish,
    object_path,
    project_id,
    split_ids,
    usage_error,
    wait,
)
from selkie.client import SelkieClient

app = typer.Typer(no_args_is_help=True, help="Branches: copies of a branch, at once.")

COLUMNS = [
    "id",
    "name",
    "parent_id",
    "default",
    "protected",
    "current_state",
    "logical_size",
    "parent_timestamp",
    "parent_lsn",
    "expires_at",
    "created_at",
]
ExpiresInOpt = Annotated[
    str | None,
    typer.Option("--expires-in", help="Delete the branch after this long: 30m, 1h, 1d, 7d"),
]
ExpiresAtOpt = Annotated[
    str | None, typer.Option("--expires-at", help="Delete the branch at this time (RFC 3339)")
]
_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def expiry(expires_in: str | None, expires_at: str | None) -> str | None:
    """The ``expires_at`` to send for ``--expires-in`` or ``--expires-at`` (None: neither)."""
    if expires_in is not None and expires_at is not None:
        usage_error("give --expires-in or --expires-at, not both")
    if expires_in is None:
        return expires_at
    found = _DURATION.match(expires_in.strip())
    if found is None:
        usage_error(f"--expires-in {expires_in!r}: a number and m, h, d or w (e.g. 1h, 7d)")
    delta = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    return (datetime.now(UTC) + delta).isoformat(timespec="seconds")


IdsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="[PROJECT_ID] BRANCH_ID",
        help="Branch id (a project id before it is the same as --project-id)",
        show_default=False,
    ),
]


def _path(pid: str, item_id: str = "") -> str:
    return object_path(pid, "branches", item_id)


def _finish(
    c: SelkieClient,
    pid: str,
    body: dict[str, Any],
    what: str,
    *,
    no_wait: bool,
    timeout: float,
    output: Output,
) -> None:
    finish(
        c,
        pid,
        body,
        ("branch", "branches"),
        what,
        no_wait=no_wait,
        timeout=timeout,
        output=output,
        columns=COLUMNS,
    )


@app.command("list")
def branches_list(
    project: Annotated[str | None, typer.Argument(help="Project id (or --project-id)")] = None,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid = project_id(project, project_opt)
    with client(config) as c:
        emit(c.list_all(_path(pid), "branches"), output, COLUMNS)


@app.command("create")
def branches_create(
    project: Annotated[str | None, typer.Argument(help="Project id (or --project-id)")] = None,
    project_opt: ProjectIdOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Branch name")] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Parent branch id")] = None,
    timestamp: Annotated[
        str | None, typer.Option("--timestamp", help="The parent as of this time (RFC 3339)")
    ] = None,
    lsn: Annotated[str | None, typer.Option("--lsn", help="…or this GTID (0-1-N)")] = None,
    endpoint: Annotated[bool, typer.Option(help="With a read-write endpoint")] = True,
    expires_in: ExpiresInOpt = None,
    expires_at: ExpiresAtOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A new branch: a copy of its parent (the default branch unless --parent), now or at a
    point in its history. json/yaml: the whole answer (branch, endpoints, operations)."""
    pid = project_id(project, project_opt)
    spec = {
        "name": name,
        "parent_id": parent,
        "parent_timestamp": timestamp,
        "parent_lsn": lsn,
        "expires_at": expiry(expires_in, expires_at),
    }
    body: dict[str, Any] = {"branch": {k: v for k, v in spec.items() if v is not None}}
    if endpoint:
        body["endpoints"] = [{"type": "read_write"}]
    with client(config) as c:
        created = c.post(_path(pid), body)
        if wait(c, pid, created["operations"], "branching", no_wait=no_wait, timeout=timeout):
            created["branch"] = c.get(_path(pid, created["branch"]["id"]))["branch"]
    emit(created if output is not Output.table else created["branch"], output, COLUMNS)


@app.command("get")
def branches_get(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    with client(config) as c:
        emit(c.get(_path(pid, branch_id))["branch"], output, COLUMNS)


@app.command("rename")
def branches_rename(
    ids: Annotated[
        list[str],
        typer.Argument(metavar="[PROJECT_ID] BRANCH_ID NAME", help="Branch id and its new name"),
    ],
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid, (branch_id, name) = split_ids(ids, ["BRANCH_ID", "NAME"], project_opt)
    with client(config) as c:
        body = c.patch(_path(pid, branch_id), {"branch": {"name": name}})
    emit(body["branch"], output, COLUMNS)


@app.command("protect")
def branches_protect(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    off: Annotated[bool, typer.Option("--off", help="Unprotect")] = False,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Protect a branch from deletion and restores (--off: allow them again)."""
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    with client(config) as c:
        body = c.patch(_path(pid, branch_id), {"branch": {"protected": not off}})
    emit(body["branch"], output, COLUMNS)


@app.command("expire")
def branches_expire(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    expires_in: ExpiresInOpt = None,
    expires_at: ExpiresAtOpt = None,
    never: Annotated[bool, typer.Option("--never", help="The branch no longer expires")] = False,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Set when a branch is deleted with its endpoints (--expires-in or --expires-at), or
    keep it (--never)."""
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    when = expiry(expires_in, expires_at)
    if (when is None) != never:
        usage_error("give one of --expires-in, --expires-at or --never")
    with client(config) as c:
        body = c.patch(_path(pid, branch_id), {"branch": {"expires_at": when}})
    emit(body["branch"], output, COLUMNS)


@app.command("delete")
def branches_delete(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    with client(config) as c:
        body = c.delete(_path(pid, branch_id))
        wait(c, pid, body["operations"], "deleting the branch", no_wait=no_wait, timeout=timeout)
    emit(body["branch"], output, COLUMNS)


@app.command("restore")
def branches_restore(
    ids: IdsArg,
    source: Annotated[str, typer.Option("--source", help="Branch whose data to take")],
    project_opt: ProjectIdOpt = None,
    timestamp: Annotated[str | None, typer.Option("--timestamp", help="As of (RFC 3339)")] = None,
    lsn: Annotated[str | None, typer.Option("--lsn", help="As of this GTID")] = None,
    preserve_under_name: Annotated[
        str | None, typer.Option("--preserve-under-name", help="Keep the replaced data")
    ] = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Replace the branch's data with --source's (itself: go back in time)."""
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    spec = {
        "source_branch_id": source,
        "source_timestamp": timestamp,
        "source_lsn": lsn,
        "preserve_under_name": preserve_under_name,
    }
    with client(config) as c:
        body = c.post(
            f"{_path(pid, branch_id)}/restore", {k: v for k, v in spec.items() if v is not None}
        )
        _finish(c, pid, body, "restoring", no_wait=no_wait, timeout=timeout, output=output)


@app.command("reset")
def branches_reset(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Reset a branch to its parent's latest state (its own changes are dropped)."""
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    with client(config) as c:
        parent = c.get(_path(pid, branch_id))["branch"]["parent_id"]
        if not parent:
            fail("the branch has no parent to reset from")
        body = c.post(f"{_path(pid, branch_id)}/restore", {"source_branch_id": parent})
        _finish(c, pid, body, "resetting", no_wait=no_wait, timeout=timeout, output=output)


@app.command("set-default")
def branches_set_default(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    with client(config) as c:
        body = c.post(f"{_path(pid, branch_id)}/set_as_default")
    emit(body["branch"], output, COLUMNS)


@app.command("schema-diff")
def branches_schema_diff(
    ids: IdsArg,
    base: Annotated[str, typer.Option("--base", help="Branch to compare with")],
    database: Annotated[str, typer.Option("--database", "-d", help="Database name")],
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The schema of DATABASE on --base and on BRANCH as a unified diff (both woken)."""
    pid, (branch_id,) = split_ids(ids, ["BRANCH_ID"], project_opt)
    with client(config) as c:
        body = c.get(
            f"{_path(pid, branch_id)}/compare_schema", base_branch_id=base, db_name=database
        )
    if output is not Output.table:
        emit(body, output)
    else:
        sys.stdout.write(body["diff"] or "(no difference)\n")
