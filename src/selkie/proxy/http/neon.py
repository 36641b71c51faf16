"""Neon-style ``POST /sql``: ``{"query": "...", "params": [...]}`` runs one statement, and
``{"queries": [{"query", "params"}, ...]}`` runs them as one transaction (all or nothing).
Parameters are bound by the proxy (``binding``). Auth is HTTP Basic, or a
``Selkie-Connection-String: mysql://<endpoint>.<role>:<password>@host/<database>`` header.
The answer has ``fields`` (name and type), ``rows`` (objects by column name, or arrays with
``Selkie-Array-Mode: true``), ``rowCount`` and ``insertId`` — for a batch, ``results``."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from selkie.proxy.http import psdb
from selkie.proxy.http.binding import BindError, bind
from selkie.proxy.http.front import (
    Front,
    HttpError,
    error_response,
    leaves_nothing,
    may_change_database,
)
from selkie.proxy.http.resultset import Column, Outcome, run_query
from selkie.proxy.http.sessions import Pinned

MAX_BATCH = 100
_SAFE_INT = 2**53


def basic_from_connection_string(request: Request) -> tuple[str | None, str | None]:
    """The Basic auth header a Selkie-Connection-String stands for, and its database."""
    value = request.headers.get("selkie-connection-string")
    if not value:
        return request.headers.get("authorization"), None
    parts = urlsplit(value)
    if parts.scheme not in ("mysql", "mariadb") or parts.username is None:
        return None, None
    user, password = unquote(parts.username), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {token}", parts.path.lstrip("/") or None


def _value(col: Column, raw: bytes | None) -> Any:
    if raw is None:
        return None
    kind = psdb.type_name(col)
    if kind.startswith(("INT", "UINT")) or kind == "YEAR":
        number = int(raw)
        return number if -_SAFE_INT < number < _SAFE_INT else str(number)
    if kind.startswith("FLOAT"):
        return float(raw)
    if col.charset == psdb.BINARY_CHARSET and kind not in ("DECIMAL", "DATE", "TIME"):
        return base64.b64encode(raw).decode()
    return raw.decode("utf-8", errors="replace")


def answer(outcome: Outcome, array_mode: bool) -> dict[str, Any]:
    names = [c.name for c in outcome.columns]
    rows: list[Any] = []
    for raw in outcome.rows:
        values = [_value(c, v) for c, v in zip(outcome.columns, raw, strict=True)]
        rows.append(values if array_mode else dict(zip(names, values, strict=True)))
    return {
        "fields": [{"name": c.name, "type": psdb.type_name(c)} for c in outcome.columns],
        "rows": rows,
        "rowCount": len(outcome.rows) if outcome.columns else outcome.affected,
        "insertId": outcome.insert_id,
    }


def _statements(body: dict[str, Any]) -> tuple[list[str], bool]:
    """The bound statements of a request, and whether it is a batch."""
    if "queries" in body:
        items = body["queries"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise BindError(f"queries must be a list of 1..{MAX_BATCH} statements")
        batch = True
    else:
        items, batch = [body], False
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            raise BindError("each statement is an object with a query string")
        params = item.get("params") or []
        if not isinstance(params, list):
            raise BindError("params must be a list")
        out.append(bind(item["query"], params))
    return out, batch


async def sql(front: Front, request: Request) -> Response:
    try:
        authorization, database = basic_from_connection_string(request)
        login, _ = await front.login(authorization, request)
        body = await front.body(request)
        try:
            statements, batch = _statements(body)
        except BindError as exc:
            raise HttpError(400, "invalid_argument", str(exc)) from exc
        conn = await front.connect(login, database)
        async with front.failing(conn):
            results, failed = await _run(front, conn, statements, batch)
        if any(may_change_database(s) for s in statements):
            conn.backend.database = None  # whoever takes it next puts its own
        await front.release(conn, clean=all(leaves_nothing(s) for s in statements))
    except HttpError as exc:
        return error_response(exc)
    array_mode = request.headers.get("selkie-array-mode", "").lower() == "true"
    sent = sum(len(s) for s in statements)
    if failed is not None:
        code, sqlstate, message = failed
        payload: dict[str, Any] = {"message": message, "code": str(code), "sqlstate": sqlstate}
        return front.counted(login, json.dumps(payload).encode(), 400, sent, len(statements))
    if batch:
        payload = {"results": [answer(r, array_mode) for r in results]}
    else:
        payload = answer(results[0], array_mode)
    return front.counted(login, json.dumps(payload).encode(), 200, sent, len(statements))


async def _run(
    front: Front, conn: Pinned, statements: list[str], batch: bool
) -> tuple[list[Outcome], tuple[int, str, str] | None]:
    async def one(statement: str) -> Outcome:
        return await run_query(
            conn.stream,
            statement,
            timeout=front.statement_timeout,
            deprecate_eof=conn.deprecate_eof,
        )

    results: list[Outcome] = []
    if batch:
        await one("START TRANSACTION")
    for statement in statements:
        outcome = await one(statement)
        if outcome.error is not None:
            if batch:
                await one("ROLLBACK")
            return results, outcome.error
        results.append(outcome)
    if batch:
        done = await one("COMMIT")
        if done.error is not None:
            return results, done.error
    return results, None
