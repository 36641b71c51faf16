"""The proxy's HTTP listener: SQL over HTTP in two dialects — PlanetScale's database-js
(``POST /psdb.v1alpha1.Database/Execute`` and ``/CreateSession``, see ``database_js``) and
a Neon-style ``POST /sql`` (``neon``) — over the same endpoints, roles and passwords as the
MySQL listener.

A request names its endpoint and role in HTTP Basic auth (``<endpoint_id>.<role>``, as the
MySQL user name; ``-pooler`` accepted) with the role's password, checked against the stored
hash before anything wakes, with the proxy's failure pacing. The statement runs on a compute
connection logged in as that role (waking the endpoint, the request held meanwhile); while
it leaves a transaction open the connection stays with the session (see ``sessions``).
Bytes and statements are counted per endpoint as for MySQL sessions (activity, metering).
What the dialects share is ``front``; which path goes to which dialect is ``routes``.
Before a request has authenticated, its connection is under the MySQL listener's pre-auth
rules: a deadline and the admission caps (see ``guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from typing import Any, cast

import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from selkie.proxy.admission import Admission
from selkie.proxy.connect import Connector
from selkie.proxy.http.front import MAX_BODY, Front, HttpError, error_response
from selkie.proxy.http.guard import TOO_MANY, Guard, GuardedProtocol, ticket
from selkie.proxy.http.routes import ROUTES, Handler
from selkie.proxy.pooler.pooler import Pooler
from selkie.proxy.stats import ProxyStats
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)


class HttpFront:
    def __init__(
        self,
        connector: Connector,
        stats: ProxyStats,
        pooler: Pooler,
        *,
        host: str,
        port: int,
        ssl_files: tuple[str, str] | None = None,
        trusted_proxies: tuple[str, ...] = (),
        statement_timeout: float = 300.0,
        max_body: int = MAX_BODY,
        admission: Admission | None = None,
        preauth_timeout: float = 10.0,
    ) -> None:
        self.host, self.port_wanted = host, port
        self.trusted_proxies = trusted_proxies
        self.ssl_files = ssl_files
        self.front = Front(
            connector, stats, pooler, statement_timeout=statement_timeout, max_body=max_body
        )
        self.sessions = self.front.sessions
        # The MySQL listener's pre-auth rules: its admission (one count for the process)
        # and its handshake deadline; TLS is set up in start().
        self.guard = Guard(
            admission or Admission(total=1000, per_address=256),
            timeout=preauth_timeout,
            tls=None,
        )
        self.routes: dict[str, Handler] = ROUTES
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI application: POST to one of ``routes``."""
        if scope["type"] != "http":
            return
        entry = ticket(scope)
        try:
            await self._serve(scope, receive, send, refused=entry is not None and entry.refused)
        finally:
            if entry is not None:
                entry.done()

    async def _serve(
        self, scope: dict[str, Any], receive: Any, send: Any, *, refused: bool
    ) -> None:
        handler = self.routes.get(scope["path"])
        if refused:
            # A kept-alive connection over a pre-auth cap: answered, then closed.
            response: Response = error_response(HttpError(503, "unavailable", TOO_MANY))
            response.headers["connection"] = "close"
        elif handler is None:
            response = error_response(HttpError(404, "not_found", "no such route"))
        elif scope["method"] != "POST":
            response = error_response(HttpError(405, "invalid_argument", "use POST"))
        else:
            try:
                response = await handler(self.front, Request(scope, receive))
            except Exception:
                log.exception("SQL over HTTP request failed")
                response = error_response(HttpError(500, "internal", "internal error"))
        await response(scope, receive, send)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.servers
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self.ssl_files is not None:
            # TLS is the guard's (counted and under the deadline), not uvicorn's.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.ssl_files)
            self.guard.tls = context
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port_wanted,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http=cast(type[asyncio.Protocol], functools.partial(GuardedProtocol, guard=self.guard)),
            interface="asgi3",
            # uvicorn believes X-Forwarded-Proto from loopback by default: a local client
            # could then claim TLS past require_tls. Only the configured proxies are.
            proxy_headers=bool(self.trusted_proxies),
            forwarded_allow_ips=",".join(self.trusted_proxies) or None,
        )
        # Bound here: a port in use is an OSError for the caller, not uvicorn's exit.
        sock = listening_socket(self.host, self.port_wanted)
        server = _QuietServer(config)
        self._server = server
        self._task = spawn(server.serve(sockets=[sock]), name="http-front")
        while not server.started:
            if self._task.done():
                sock.close()
                raise OSError(f"the HTTP listener did not start on {self.host}:{self.port_wanted}")
            await asyncio.sleep(0.01)
        self._reaper = spawn(self._reap(), name="http-sessions")
        log.info("SQL over HTTP on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        await cancel(self._reaper)
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        await self.guard.close()
        await self.sessions.close()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1)
            await self.sessions.reap()


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP listener. Its protocol is IPPROTO_TCP, not 0: asyncio turns Nagle off
    (TCP_NODELAY) only on accepted sockets whose protocol says TCP, and with Nagle on every
    response waits for the client's delayed ACK (~40 ms; 700 requests/s at any concurrency)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn inside the proxy: the process's own signal handling stays in charge."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield
