"""PlanetScale's database-js dialect: ``POST /psdb.v1alpha1.Database/Execute`` runs one
statement, ``/CreateSession`` opens a session. The session is an opaque signed token the
driver sends back with each request (``sessions``): it names the database, and while a
statement leaves a transaction open, the backend held for it. The answer's shapes are in
``psdb``."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from selkie.proxy.connect import Authenticated
from selkie.proxy.http import psdb
from selkie.proxy.http.front import (
    Front,
    HttpError,
    error_response,
    leaves_nothing,
    may_change_database,
)
from selkie.proxy.http.resultset import Outcome, run_query

_USE = re.compile(r"^\s*use\s+`?([A-Za-z0-9_$]{1,64})`?\s*;?\s*$", re.IGNORECASE)


async def create_session(front: Front, request: Request) -> Response:
    try:
        _, user = await front.login(request.headers.get("authorization"), request)
        await front.body(request)
    except HttpError as exc:
        return error_response(exc)
    return JSONResponse({"session": front.sessions.encode(user, None, None)})


async def execute(front: Front, request: Request) -> Response:
    started = time.perf_counter()
    try:
        login, user = await front.login(request.headers.get("authorization"), request)
        body = await front.body(request)
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise HttpError(400, "invalid_argument", "query must be a non-empty string")
        session = front.sessions.decode(body.get("session"), user) or {}
        held = front.sessions.take(session.get("pin"), user)
        conn = held or await front.connect(login, session.get("db") or None)
        conn.user = user
        async with front.failing(conn):
            outcome = await run_query(
                conn.stream,
                query,
                timeout=front.statement_timeout,
                deprecate_eof=conn.deprecate_eof,
            )
        used = _USE.match(query)
        if used and outcome.error is None:
            conn.backend.database = used.group(1)
        elif may_change_database(query):
            conn.backend.database = None  # whoever takes it next puts its own
        database = conn.backend.database
        pin = None
        if outcome.in_transaction:
            pin = front.sessions.pin(conn, session.get("pin"))
        else:
            await front.release(conn, clean=bool(used) or leaves_nothing(query))
    except HttpError as exc:
        return error_response(exc)
    return _answer(front, login, user, database, pin, outcome, len(query), started)


def _answer(
    front: Front,
    login: Authenticated,
    user: str,
    database: str | None,
    pin: str | None,
    outcome: Outcome,
    sent: int,
    started: float,
) -> Response:
    payload: dict[str, Any] = {
        "session": front.sessions.encode(user, database, pin),
        "timing": time.perf_counter() - started,
    }
    if outcome.error is not None:
        code, sqlstate, message = outcome.error
        payload["error"] = psdb.error(code, message, sqlstate)
        status = 400
    else:
        payload["result"] = psdb.result(outcome)
        status = 200
    return front.counted(login, json.dumps(payload).encode(), status, sent, 1)
