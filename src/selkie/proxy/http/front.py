"""What every SQL-over-HTTP dialect shares: reading a request's body, its login (HTTP Basic,
checked by the proxy's authenticate step before anything wakes), a backend of the endpoint's
pool put in the right database, and its release (reset unless its statements left nothing
behind), the answer counted for the endpoint. The dialects (``database_js``, ``neon``) turn
requests into statements and results into their JSON; this module knows neither shape but
the error's, which is database-js's for every route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from selkie.mysql.packets import CLEAR_PLUGIN, HandshakeResponse41
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import (
    PROXY_CAPABILITIES,
    SYSTEM_DATABASES,
    Capability,
    ProtocolError,
)
from selkie.proxy.connect import Authenticated, Connector, Credentials, Refused
from selkie.proxy.handshake import route
from selkie.proxy.http import psdb
from selkie.proxy.http.guard import ticket
from selkie.proxy.http.resultset import ResultTooLarge, reset, run_query
from selkie.proxy.http.sessions import Pinned, Sessions
from selkie.proxy.pooler.backends import FORMAT_CAPS, Backend, PoolKey
from selkie.proxy.pooler.pool import PoolTimeout
from selkie.proxy.pooler.pooler import Pooler
from selkie.proxy.pooler.runner import CommandRefused
from selkie.proxy.pooler.sqlscan import STRINGS_OR_COMMENTS, classify
from selkie.proxy.stats import ProxyStats

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


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(exc: HttpError) -> Response:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(
        {"error": psdb.error(exc.code, exc.message)}, status_code=exc.status, headers=headers
    )


class Front:
    """The proxy's side of a request, whatever its dialect: login, a backend, its release."""

    def __init__(
        self,
        connector: Connector,
        stats: ProxyStats,
        pooler: Pooler,
        *,
        statement_timeout: float = 300.0,
        max_body: int = MAX_BODY,
    ) -> None:
        self.connector = connector
        self.stats = stats
        self.pooler = pooler
        self.statement_timeout = statement_timeout
        self.max_body = max_body
        self.sessions = Sessions()
        # The database a role's sessions start in, once found (endpoint, role) -> name.
        self.defaults: dict[tuple[str, str], str] = {}

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
        if target is not None:
            target = await self.connector.resolve(target)
        # A failure is paced by the MySQL listener's budget, the connection counted as
        # pre-auth meanwhile (the caps bound how many guesses wait at once).
        verified = await self.connector.verify(
            target, Credentials(CLEAR_PLUGIN, password.encode()), client_ip=client
        )
        if target is None or verified is None:
            raise HttpError(401, "unauthenticated", f"Access denied for user '{user}'")
        access, stage1 = verified
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
        held.pool.was_reset()

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
