"""The proxy's HTTP listener: PlanetScale's database-js protocol
(``POST /psdb.v1alpha1.Database/Execute`` and ``/CreateSession``) over the same endpoints,
roles and passwords as the MySQL listener.

A request names its endpoint and role in HTTP Basic auth (``<endpoint_id>.<role>``, as the
MySQL user name; ``-pooler`` accepted) with the role's password, checked against the stored
hash before anything wakes, with the proxy's failure pacing. The statement runs on a compute
connection logged in as that role (waking the endpoint, the request held meanwhile); while
it leaves a transaction open the connection stays with the session (see ``sessions``).
Bytes and statements are counted per endpoint as for MySQL sessions (activity, metering).
Before a request has authenticated, its connection is under the MySQL listener's pre-auth
rules: a deadline and the admission caps (see ``guard``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from selkie.mysql import auth
from selkie.mysql.packets import HandshakeResponse41
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import (
    PROXY_CAPABILITIES,
    SYSTEM_DATABASES,
    Capability,
    ProtocolError,
)
from selkie.proxy.admission import Admission
from selkie.proxy.connect import Authenticated, Connector, Refused
from selkie.proxy.handshake import route
from selkie.proxy.http import neon, psdb
from selkie.proxy.http.guard import TOO_MANY, Guard, GuardedProtocol, ticket
from selkie.proxy.http.resultset import Outcome, ResultTooLarge, reset, run_query
from selkie.proxy.http.sessions import Pinned, Sessions
from selkie.proxy.pooler.pool import FORMAT_CAPS, Backend, PoolKey, PoolTimeout
from selkie.proxy.pooler.pooler import Pooler
from selkie.proxy.pooler.runner import CommandRefused
from selkie.proxy.pooler.sqlscan import STRINGS_OR_COMMENTS, classify
from selkie.proxy.stats import ProxyStats
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

UTF8MB4 = 45
MAX_BODY = 10 << 20
# What an HTTP session asks of the compute: an ordinary client's capabilities (no
# CLIENT_NO_SCHEMA, which makes the server refuse db.table names; no LOCAL INFILE; rows
# affected as changed, not matched; column definitions without MariaDB's extended metadata,
# which the result reader does not parse).
HTTP_CAPABILITIES = int(
    PROXY_CAPABILITIES
    & ~(
        Capability.NO_SCHEMA
        | Capability.ODBC
        | Capability.LOCAL_FILES
        | Capability.FOUND_ROWS
        | Capability.INTERACTIVE
        | Capability.MARIADB_EXTENDED_METADATA
    )
)

_USE = re.compile(r"^\s*use\s+`?([A-Za-z0-9_$]{1,64})`?\s*;?\s*$", re.IGNORECASE)


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


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
        self.connector = connector
        self.stats = stats
        self.host, self.port_wanted = host, port
        self.trusted_proxies = trusted_proxies
        self.ssl_files = ssl_files
        self.statement_timeout = statement_timeout
        self.max_body = max_body
        self.pooler = pooler
        # The MySQL listener's pre-auth rules: its admission (one count for the process)
        # and its handshake deadline; TLS is set up in start().
        self.guard = Guard(
            admission or Admission(total=1000, per_address=256),
            timeout=preauth_timeout,
            tls=None,
        )
        self.sessions = Sessions()
        # The database a role's sessions start in, once found (endpoint, role) -> name.
        self.defaults: dict[tuple[str, str], str] = {}
        # Three routes, so no router and no middleware: a dict of handlers (the ASGI stack's
        # layers were ~40 % of the proxy's time per request).
        self.routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/psdb.v1alpha1.Database/Execute": self.execute,
            "/psdb.v1alpha1.Database/CreateSession": self.create_session,
            "/sql": self.sql,
        }
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
                response = await handler(Request(scope, receive))
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

    # --- requests ----------------------------------------------------------------------------

    async def body(self, request: Request) -> dict[str, Any]:
        data = bytearray()
        try:
            async for chunk in request.stream():
                data += chunk
                if len(data) > self.max_body:
                    raise HttpError(413, "payload_too_large", f"body over {self.max_body} bytes")
        except ClientDisconnect as exc:  # gone, or cut at the pre-auth deadline
            raise HttpError(400, "invalid_argument", "the client left mid-body") from exc
        try:
            body = json.loads(data or b"{}")
        except ValueError as exc:
            raise HttpError(400, "invalid_argument", "the body is not JSON") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_argument", "the body must be a JSON object")
        return body

    async def login(self, header: str | None, request: Request) -> tuple[Authenticated, str]:
        """The endpoint and role of a request's Basic auth, its password checked."""
        header = header or ""
        scheme, _, encoded = header.partition(" ")
        try:
            user, sep, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if scheme.lower() != "basic" or not sep:
            raise HttpError(401, "unauthenticated", "HTTP Basic auth with <endpoint_id>.<role>")
        target = route(user, None, self.connector.config.domain)
        client = request.client.host if request.client else "local"
        access = None
        if target is not None:
            target = await self.connector.resolve(target)
            access = await self.connector.control.get_access(target.endpoint_id, target.role)
        stage1 = auth.verify_cleartext(password.encode(), access.password_hash) if access else None
        if target is None or access is None or stage1 is None:
            # Paced by the MySQL listener's budget, the connection counted as pre-auth
            # meanwhile (the caps bound how many guesses wait at once).
            await self.connector.failed_login(client, target, access)
            raise HttpError(401, "unauthenticated", f"Access denied for user '{user}'")
        entry = ticket(request.scope)
        if entry is not None:
            entry.authenticated()
        refused = self.connector.admitted(target, access, tls=request.url.scheme == "https")
        if refused is not None:
            raise HttpError(403, "permission_denied", refused.message)
        self.connector.logins["ok:http"] += 1
        return Authenticated(route=target, access=access, stage1=stage1, seq=0), user

    async def connect(self, login: Authenticated, database: str | None) -> Pinned:
        """A backend of the endpoint's pool for the request (the pooler's cap and queue:
        many HTTP callers share few compute connections), in ``database``, else the role's
        default database."""
        target = login.route
        pool = self.pooler.pool_for(login)
        key = PoolKey(role=target.role, caps=HTTP_CAPABILITIES & FORMAT_CAPS, charset=UTF8MB4)

        async def dial() -> Backend:
            response = HandshakeResponse41(
                capabilities=HTTP_CAPABILITIES,
                max_packet_size=1 << 24,
                charset=UTF8MB4,
                user=target.role,
                auth_response=b"",
                database=None,  # put per request
                auth_plugin=None,
            )
            dialled = await self.connector.dial(login, response, HTTP_CAPABILITIES)
            if isinstance(dialled, Refused):
                raise CommandRefused(dialled.code, dialled.message, dialled.sqlstate)
            conn = dialled.backend
            stream = PacketStream(conn.reader, conn.writer, limit=1 << 30)
            return Backend(key=key, reader=conn.reader, writer=conn.writer, stream=stream)

        try:
            backend = await pool.acquire(key, dial)
        except CommandRefused as exc:
            status = 503 if exc.code in (1159, 1158, 1040) else 400
            raise HttpError(status, str(exc.code), exc.message) from exc
        except PoolTimeout as exc:
            raise HttpError(
                429,
                "resource_exhausted",
                f"all {pool.cap} backend connections of endpoint {target.endpoint_id} are "
                "busy; retry later",
            ) from exc
        held = Pinned(backend, pool)
        try:
            if backend.dirty:
                await self._reset(held)
            database = database or self.defaults.get((target.endpoint_id, target.role))
            if database is None:
                await self.default_database(held)
            elif database != backend.database:
                outcome = await run_query(
                    held.stream,
                    f"USE `{database.replace('`', '``')}`",
                    timeout=self.statement_timeout,
                    deprecate_eof=held.deprecate_eof,
                )
                if outcome.error is not None:
                    await held.give_back()
                    code, _, message = outcome.error
                    raise HttpError(400, str(code), message)
                backend.database = database
        except (OSError, ProtocolError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await held.give_back(broken=True)
            raise HttpError(503, "unavailable", "lost the compute connection") from exc
        return held

    @contextlib.asynccontextmanager
    async def failing(self, held: Pinned) -> AsyncIterator[None]:
        """Statements on ``held``: if they fail short of an answer, the backend is closed
        (its slot freed) and the caller gets 503 (connection lost) or 413 (too large)."""
        try:
            yield
        except (OSError, ProtocolError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await held.give_back(broken=True)
            raise HttpError(503, "unavailable", "lost the compute connection") from exc
        except ResultTooLarge as exc:
            await held.give_back(broken=True)
            raise HttpError(413, "resource_exhausted", str(exc)) from exc
        except BaseException:
            await held.give_back(broken=True)
            raise

    async def _reset(self, held: Pinned) -> None:
        """COM_RESET_CONNECTION (the current database stays); a refusal breaks the backend."""
        if not await reset(held.stream, timeout=5):
            raise OSError("the compute refused COM_RESET_CONNECTION")
        held.backend.forget_session()
        held.pool.resets += 1

    async def release(self, held: Pinned, *, clean: bool = False) -> None:
        """A backend whose request is done, back to the pool: reset first unless its
        statements left nothing behind (a plain read); broken if the reset fails."""
        try:
            if not clean:
                await self._reset(held)
        except (OSError, ProtocolError, asyncio.IncompleteReadError, TimeoutError):
            await held.give_back(broken=True)
            return
        await held.give_back()

    async def default_database(self, held: Pinned) -> str | None:
        """A session starts in the role's database (database-js names none): the first
        one it may use besides the server's own."""
        listed = await run_query(
            held.stream,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
            timeout=self.statement_timeout,
            deprecate_eof=held.deprecate_eof,
        )
        names = sorted(str(r[0], "utf-8") for r in listed.rows if r and r[0] is not None)
        mine = [n for n in names if n not in SYSTEM_DATABASES]
        if not mine:
            return None
        self.defaults[(held.endpoint_id, held.role)] = mine[0]
        if held.backend.database != mine[0]:
            await run_query(
                held.stream,
                f"USE `{mine[0]}`",
                timeout=self.statement_timeout,
                deprecate_eof=held.deprecate_eof,
            )
            held.backend.database = mine[0]
        return mine[0]

    async def sql(self, request: Request) -> Response:
        return await neon.sql(self, request)

    async def create_session(self, request: Request) -> Response:
        try:
            _, user = await self.login(request.headers.get("authorization"), request)
            await self.body(request)
        except HttpError as exc:
            return error_response(exc)
        return JSONResponse({"session": self.sessions.encode(user, None, None)})

    async def execute(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            login, user = await self.login(request.headers.get("authorization"), request)
            body = await self.body(request)
            query = body.get("query")
            if not isinstance(query, str) or not query.strip():
                raise HttpError(400, "invalid_argument", "query must be a non-empty string")
            session = self.sessions.decode(body.get("session"), user) or {}
            held = self.sessions.take(session.get("pin"), user)
            conn = held or await self.connect(login, session.get("db") or None)
            conn.user = user
            async with self.failing(conn):
                outcome = await run_query(
                    conn.stream,
                    query,
                    timeout=self.statement_timeout,
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
                pin = self.sessions.pin(conn, session.get("pin"))
            else:
                await self.release(conn, clean=bool(used) or leaves_nothing(query))
        except HttpError as exc:
            return error_response(exc)
        return self._answer(login, user, database, pin, outcome, len(query), started)

    def _answer(
        self,
        login: Authenticated,
        user: str,
        database: str | None,
        pin: str | None,
        outcome: Outcome,
        sent: int,
        started: float,
    ) -> Response:
        payload: dict[str, Any] = {
            "session": self.sessions.encode(user, database, pin),
            "timing": time.perf_counter() - started,
        }
        if outcome.error is not None:
            code, sqlstate, message = outcome.error
            payload["error"] = psdb.error(code, message, sqlstate)
            status = 400
        else:
            payload["result"] = psdb.result(outcome)
            status = 200
        return self.counted(login, json.dumps(payload).encode(), status, sent, 1)

    def counted(
        self, login: Authenticated, body: bytes, status: int, sent: int, statements: int
    ) -> Response:
        """The answer, its bytes and statements counted for the endpoint (activity, metering)."""
        with self.stats.session(login.route.endpoint_id) as counters:
            counters.client_sent(sent, statements)
            counters.bytes_to_client += len(body)
        return Response(body, status_code=status, media_type="application/json")


_READS = ("select", "show", "explain", "describe", "desc", "with")


_WORD_USE = re.compile(r"\buse\b")


def may_change_database(query: str) -> bool:
    """Whether the statement may leave its session in another database than the one the
    front put it in, untracked: a USE anywhere but alone, or several statements (a reset
    keeps the database, so the next request's USE must not be skipped)."""
    stripped = STRINGS_OR_COMMENTS.sub("''", query).strip().lower()
    return bool(_WORD_USE.search(stripped)) or ";" in stripped.rstrip(";")


def leaves_nothing(query: str) -> bool:
    """A statement that leaves no session state behind (a plain read: no variables, no
    USE, no locks, nothing the pooler would pin for): its connection needs no reset."""
    stripped = STRINGS_OR_COMMENTS.sub("''", query).strip().lower()
    if not stripped.startswith(_READS) or "@" in stripped or ";" in stripped.rstrip(";"):
        return False
    effect = classify(query)
    return not (
        effect.pin
        or effect.sets
        or effect.database
        or effect.lock_tables
        or effect.unpin_lock_tables
        or effect.untracked
        or effect.reads_last_insert_id
    )


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


def error_response(exc: HttpError) -> Response:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(
        {"error": psdb.error(exc.code, exc.message)}, status_code=exc.status, headers=headers
    )


class _QuietServer(uvicorn.Server):
    """uvicorn inside the proxy: the process's own signal handling stays in charge."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield
