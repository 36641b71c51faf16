"""The listener's routes: a path to the dialect's handler. Three routes, so no router and
no middleware: a dict (the ASGI stack's layers were ~40 % of the proxy's time per request)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from selkie.proxy.http import database_js, neon
from selkie.proxy.http.front import Front

Handler = Callable[[Front, Request], Awaitable[Response]]

ROUTES: dict[str, Handler] = {
    "/psdb.v1alpha1.Database/Execute": database_js.execute,
    "/psdb.v1alpha1.Database/CreateSession": database_js.create_session,
    "/sql": neon.sql,
}
