"""`selkie sql`: one statement on a branch through the proxy, as it is now or as it was at
a past time ("time travel").

With ``--at``, a throwaway branch of that point answers: made from the branch's history
at the time (``parent_timestamp``, as a branch at a past point always is), set to expire
in 10 minutes in case this process dies, the statement run in a read-only transaction on
its compute, and the branch deleted after the answer. The answer says the point it is
of. The role's password is asked for (or read from ``SELKIE_PASSWORD``): it is never
stored, and a branch's roles keep their passwords.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pymysql
import typer

from selkie.cli.common import (
    BranchOpt,
    ConfigOpt,
    Output,
    OutputOpt,
    ProjectIdOpt,
    TimeoutOpt,
    client,
    emit,
    fail,
    note,
    project_id,
    resolve_branch,
    wait,
)
from selkie.cli.connect import DatabaseOpt, RoleOpt, endpoint_uri
from selkie.client import SelkieClient

# A throwaway branch outlives a CLI that died before deleting it by this much at most.
THROWAWAY_FOR = timedelta(minutes=10)


def sql(
    statement: Annotated[str, typer.Argument(help="The SQL to run")],
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    role: RoleOpt = None,
    database: DatabaseOpt = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="As of this time (RFC 3339, e.g. 2026-12-01T14:02:00Z): answered read-only "
            "by a throwaway branch of that point",
        ),
    ] = None,
    ssl_ca: Annotated[
        str | None,
        typer.Option("--ssl-ca", help="CA file to verify the proxy's certificate (not loopback)"),
    ] = None,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Run one statement on a branch (default: the default branch) as a role (default: its
    first), through the proxy; with --at, on the branch as it was then. table: the rows;
    json/yaml: columns, rows and the point answered."""
    pid = project_id(None, project_opt)
    password = os.environ.get("SELKIE_PASSWORD") or typer.prompt("Password", hide_input=True)
    with client(config) as c:
        if at is None:
            params = _params(c, pid, role, database, branch)
            answer = _run(params, password, statement, read_only=False, ssl_ca=ssl_ca)
        else:
            answer = _as_of(
                c, pid, branch, role, database, at, password, statement, ssl_ca, timeout
            )
    if output is not Output.table:
        emit(answer, output)
        return
    columns = answer["columns"]
    if columns:
        emit([dict(zip(columns, row, strict=True)) for row in answer["rows"]], output, columns)
    else:
        note(f"{answer['affected']} rows affected", output)
    if answer.get("as_of"):
        note(f"as of {answer['as_of']} (answered by a branch of that point, now deleted)", output)


def _params(
    c: SelkieClient, pid: str, role: str | None, database: str | None, branch: str | None
) -> dict[str, Any]:
    body = endpoint_uri(
        c, pid, role=role, database=database, branch=branch, endpoint=None, pooled=False
    )
    params: dict[str, Any] = body["connection_parameters"]
    return params


def _as_of(
    c: SelkieClient,
    pid: str,
    branch: str | None,
    role: str | None,
    database: str | None,
    at: str,
    password: str,
    statement: str,
    ssl_ca: str | None,
    timeout: float,
) -> dict[str, Any]:
    parent = resolve_branch(c, pid, branch)
    expires = (datetime.now(UTC) + THROWAWAY_FOR).isoformat(timespec="seconds")
    made = c.post(
        f"/v1/projects/{pid}/branches",
        {
            "branch": {
                "name": f"as-of-{secrets.token_hex(4)}",
                "parent_id": parent,
                "parent_timestamp": at,
                "expires_at": expires,
            },
            "endpoints": [{"type": "read_write"}],
        },
    )
    throwaway = made["branch"]["id"]
    try:
        wait(c, pid, made["operations"], "making the branch of that point", timeout=timeout)
        params = _params(c, pid, role, database, throwaway)
        answer = _run(params, password, statement, read_only=True, ssl_ca=ssl_ca)
        answer["as_of"] = made["branch"]["parent_timestamp"]
        return answer
    finally:
        # Its expiry deletes it anyway if this does not get through.
        with contextlib.suppress(Exception):
            c.delete(f"/v1/projects/{pid}/branches/{throwaway}")


def _tls(host: str, ssl_ca: str | None) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return {"ssl_disabled": True}
    if host == "localhost":
        return {"ssl_disabled": True}
    return {"ssl": {"ca": ssl_ca} if ssl_ca else {}}


def _run(
    params: dict[str, Any], password: str, statement: str, *, read_only: bool, ssl_ca: str | None
) -> dict[str, Any]:
    try:
        conn = pymysql.connect(
            host=params["host"],
            port=int(params["port"]),
            user=params["user"],
            password=password,
            database=params["database"],
            connect_timeout=60,
            read_timeout=600,
            **_tls(str(params["host"]), ssl_ca),
        )
    except pymysql.err.MySQLError as exc:
        fail(f"cannot connect as {params['user']}: {_error(exc)}")
    try:
        with conn.cursor() as cur:
            if read_only:
                cur.execute("START TRANSACTION READ ONLY")
            affected = cur.execute(statement)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = [list(r) for r in cur.fetchall()] if columns else []
            if read_only:
                cur.execute("ROLLBACK")
            else:
                conn.commit()
    except pymysql.err.MySQLError as exc:
        fail(_error(exc))
    finally:
        conn.close()
    return {"columns": columns, "rows": rows, "affected": affected if not columns else None}


def _error(exc: pymysql.err.MySQLError) -> str:
    if len(exc.args) >= 2:
        return f"ERROR {exc.args[0]}: {exc.args[1]}"
    return str(exc)
