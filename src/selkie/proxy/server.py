"""The MySQL-protocol proxy: one address for every endpoint.

Authenticates clients itself against the stored hashes (no compute needed), wakes the
endpoint's compute through the :class:`ControlPlane`, holds the client while it starts,
logs in to it, then relays. Counts bytes and statements per endpoint and reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from selkie.controlplane import Access, Activity, Backend, ControlPlane
from selkie.errors import Conflict, NotFound, QuotaExceeded, SelkieError, StateConflict
from selkie.mysql.packets import (
    CLEAR_PLUGIN,
    NATIVE_PLUGIN,
    HandshakeResponse41,
    build_change_user,
    build_err,
    build_handshake_v10,
    build_ok,
    is_ssl_request,
    parse_change_user,
    parse_err,
    parse_handshake_response,
)
from selkie.mysql.stream import PacketStream, frame
from selkie.mysql.wire import PROXY_CAPABILITIES, Capability, ErrorCode, ProtocolError
from selkie.proxy import auth
from selkie.proxy.pool import FORMAT_CAPS, EndpointPool, PoolKey, PoolTimeout
from selkie.proxy.pool import Backend as PoolBackend
from selkie.proxy.pooled import CommandRefused, PooledSession, backend_response
from selkie.proxy.relay import Counters, ThreadedRelay, async_relay
from selkie.proxy.session import (
    HANDSHAKE_LIMIT,
    BackendConnection,
    Route,
    negotiated_caps,
    open_backend,
    read_client_auth,
    route,
    server_name,
    sni_capture,
)
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

SERVER_VERSION = "5.5.5-10.11.19-MariaDB-Selkie"
RELAY_LIMIT = 2**31


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 6033
    domain: str = "selkie.localhost"
    tls: ssl.SSLContext | None = None
    wake_timeout: float = 30.0
    handshake_timeout: float = 10.0
    backend_timeout: float = 10.0
    # Failed logins allowed per (endpoint as named, client address) in the window.
    auth_failures_allowed: int = 10
    auth_failure_window: float = 60.0
    report_interval: float = 1.0
    server_version: str = SERVER_VERSION
    pool_wait_timeout: float = 30.0


@dataclass
class EndpointStats:
    sessions: int = 0
    last_active: float | None = None
    bytes_to_clients: int = 0
    bytes_from_clients: int = 0
    statements: int = 0
    live: list[Counters] = field(default_factory=list)


class AuthFailures:
    """A sliding window of failed logins per (endpoint as named, client address). Once a
    key has failed, logins still being checked for it count too, so a burst of parallel
    guesses cannot all pass the gate (a storm of good logins, with no failure, is not held
    back)."""

    MAX_KEYS = 100_000

    def __init__(self, allowed: int, window: float) -> None:
        self.allowed = allowed
        self.window = window
        self._seen: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._inflight: Counter[tuple[str, str]] = Counter()

    def blocked(self, key: tuple[str, str]) -> bool:
        times = self._seen.get(key)
        if times:
            cutoff = time.monotonic() - self.window
            while times and times[0] < cutoff:
                times.popleft()
        failures = len(times or ())
        return failures > 0 and failures + self._inflight[key] >= self.allowed

    def begin(self, key: tuple[str, str]) -> None:
        self._inflight[key] += 1

    def end(self, key: tuple[str, str], *, failed: bool) -> None:
        self._inflight[key] -= 1
        if self._inflight[key] <= 0:
            del self._inflight[key]
        if failed:
            self.record(key)

    def record(self, key: tuple[str, str]) -> None:
        times = self._seen.get(key)
        if times is None:
            times = self._seen[key] = deque()
        self._seen.move_to_end(key)
        times.append(time.monotonic())
        while len(self._seen) > self.MAX_KEYS:  # bounded memory: forget the stalest
            self._seen.popitem(last=False)


class _Refused(Exception):
    """Answer the client with this ERR and close."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProxyServer:
    def __init__(self, control: ControlPlane, config: ProxyConfig) -> None:
        self.control = control
        self.config = config
        self.stats: dict[str, EndpointStats] = defaultdict(EndpointStats)
        self.failures = AuthFailures(config.auth_failures_allowed, config.auth_failure_window)
        # Login outcomes by kind ("ok:<plugin>", "switched:<plugin>", "failed", "blocked").
        self.logins: Counter[str] = Counter()
        # Where the last login per endpoint spent its time (ms): auth, wake, backend login.
        self.last_timings: dict[str, dict[str, float]] = {}
        self._ids = itertools.count(1)
        # Who reports this proxy's counters, which are cumulative from `started`.
        self.source = f"proxy-{secrets.token_hex(8)}"
        self.started = datetime.now(UTC)
        self._server: asyncio.Server | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._relays: set[ThreadedRelay] = set()
        self._sessions: set[asyncio.Task[None]] = set()
        if config.tls is not None:
            sni_capture(config.tls)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pools: dict[str, EndpointPool] = {}
        # Relay threads block in syscalls; small stacks keep thousands of sessions cheap.
        threading.stack_size(512 * 1024)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._accept,
            self.config.listen_host,
            self.config.listen_port,
            limit=2**20,
            backlog=1024,
            reuse_address=True,
        )
        self._reporter = spawn(self._report_loop(), name="proxy-activity")
        log.info("proxy listening on %s:%d", self.config.listen_host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel(self._reporter)
        for relay in list(self._relays):
            relay.close()
        for task in list(self._sessions):
            await cancel(task)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        await self._report()

    # --- activity --------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.report_interval)
            try:
                await self._report()
            except SelkieError as exc:
                log.warning("could not report proxy activity: %s", exc.message)

    def activity(self) -> list[Activity]:
        out = []
        for endpoint_id, st in self.stats.items():
            last = st.last_active
            to_c, from_c, stmts = st.bytes_to_clients, st.bytes_from_clients, st.statements
            for c in st.live:
                last = max(last or 0.0, c.last_active)
                to_c += c.bytes_to_client
                from_c += c.bytes_from_client
                stmts += c.statements
            out.append(
                Activity(
                    endpoint_id=endpoint_id,
                    sessions=st.sessions,
                    last_active=datetime.fromtimestamp(last, UTC) if last else None,
                    bytes_to_clients=to_c,
                    bytes_from_clients=from_c,
                    statements=stmts,
                    source=self.source,
                    source_started=self.started,
                )
            )
        return out

    async def _report(self) -> None:
        items = self.activity()
        if items:
            await self.control.report_activity(items)

    # --- connections -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        except ProtocolError as exc:
            log.debug("closing a connection: %s", exc)
        except Exception:
            log.exception("proxy session crashed")
        finally:
            self._sessions.discard(task)
            # Whatever happened, this connection's descriptor goes (a silent client, a
            # failed TLS handshake, a crash): nothing leaks.
            with contextlib.suppress(Exception):
                writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = str(peer[0]) if isinstance(peer, tuple) else "local"
        conn_id = next(self._ids)
        scramble = auth.new_scramble()
        stream = PacketStream(reader, writer, limit=HANDSHAKE_LIMIT)
        caps = PROXY_CAPABILITIES | (Capability.SSL if self.config.tls else 0)
        await stream.send(
            0,
            build_handshake_v10(
                server_version=self.config.server_version,
                connection_id=conn_id,
                scramble=scramble,
                capabilities=caps,
            ),
        )
        timeout = self.config.handshake_timeout
        seq, payload = await asyncio.wait_for(stream.read(), timeout)
        tls = False
        sni = None
        if is_ssl_request(payload):
            if self.config.tls is None:
                raise ProtocolError("SSLRequest but TLS is not configured")
            await asyncio.wait_for(_start_tls(reader, writer, self.config.tls), timeout)
            tls = True
            sni = server_name(writer.get_extra_info("ssl_object"))
            seq, payload = await asyncio.wait_for(stream.read(), timeout)
        response = parse_handshake_response(payload)
        seq = (seq + 1) & 0xFF
        try:
            t0 = time.perf_counter()
            target, access, stage1, seq = await self._authenticate(
                stream, response, seq, scramble, tls=tls, sni=sni, client_ip=client_ip
            )
            t1 = time.perf_counter()
            if target.pooled:
                await self._pooled(stream, response, target, access, stage1, seq, tls=tls)
                return
            backend = await self._wake(target)
            t2 = time.perf_counter()
            client_caps = negotiated_caps(response.capabilities, tls)
            for attempt in range(2):
                try:
                    conn = await open_backend(
                        backend,
                        response=response,
                        role=target.role,
                        stage1=stage1,
                        capabilities=client_caps,
                        timeout=self.config.backend_timeout,
                    )
                    break
                except (OSError, TimeoutError, ProtocolError) as exc:
                    if attempt == 0:
                        # The compute went away between the wake and the login (a suspend
                        # that raced this client): wake it again, once.
                        backend = await self._wake(target)
                        continue
                    raise _Refused(
                        ErrorCode.NET_READ_ERROR,
                        f"could not reach the compute of endpoint {target.endpoint_id}: {exc}",
                    ) from exc
        except _Refused as refusal:
            await stream.send(seq, build_err(refusal.code, refusal.message))
            writer.close()
            return
        self.last_timings[target.endpoint_id] = {
            "client_auth_ms": (t1 - t0) * 1000,
            "wake_ms": (t2 - t1) * 1000,
            "backend_login_ms": (time.perf_counter() - t2) * 1000,
        }
        # The compute's own answer to the login (OK, or ERR such as an unknown database).
        data, _ = frame(seq, conn.first_reply)
        if conn.first_reply[:1] == b"\xff":
            writer.write(data)
            await writer.drain()
            writer.close()
            conn.writer.close()
            return
        await self._relay(
            reader,
            writer,
            conn,
            target,
            data,
            tls=tls,
            scramble=scramble,
            client_caps=client_caps,
        )

    async def _pooled(
        self,
        stream: PacketStream,
        response: HandshakeResponse41,
        target: Route,
        access: Access,
        stage1: bytes,
        seq: int,
        *,
        tls: bool,
    ) -> None:
        """A `-pooler` connection: the session borrows backends from the endpoint's pool."""
        if not access.pooler_enabled:
            raise _Refused(
                ErrorCode.ACCESS_DENIED,
                f"the pooler is not enabled for endpoint {target.endpoint_id}; enable it with "
                'PATCH …/endpoints/{id} {"endpoint": {"pooler_enabled": true}}',
            )
        pool = self.pools.get(target.endpoint_id)
        if pool is None:
            pool = self.pools[target.endpoint_id] = EndpointPool(
                target.endpoint_id,
                cap=access.pooler_max_backends,
                wait_timeout=self.config.pool_wait_timeout,
            )
        pool.cap = access.pooler_max_backends
        client_caps = negotiated_caps(response.capabilities, tls)
        key = PoolKey(role=target.role, caps=client_caps & FORMAT_CAPS, charset=response.charset)
        login = backend_response(response)

        async def connect() -> PoolBackend:
            try:
                address = await self._wake(target)
            except _Refused as refusal:
                raise CommandRefused(refusal.code, refusal.message) from None
            try:
                conn = await open_backend(
                    address,
                    response=login,
                    role=target.role,
                    stage1=stage1,
                    capabilities=client_caps,
                    timeout=self.config.backend_timeout,
                )
            except (OSError, TimeoutError, ProtocolError) as exc:
                raise CommandRefused(
                    ErrorCode.NET_READ_ERROR,
                    f"could not reach the compute of endpoint {target.endpoint_id}: {exc}",
                ) from exc
            if conn.first_reply[:1] == b"\xff":
                conn.writer.close()
                err = parse_err(conn.first_reply)
                raise CommandRefused(err.code, err.message, err.sqlstate)
            return PoolBackend(
                key=key,
                reader=conn.reader,
                writer=conn.writer,
                stream=PacketStream(conn.reader, conn.writer, limit=RELAY_LIMIT),
            )

        st = self.stats[target.endpoint_id]
        counters = Counters()
        stream.limit = RELAY_LIMIT
        session = PooledSession(
            client=stream,
            pool=pool,
            key=key,
            connect=connect,
            database=response.database,
            transaction_mode=access.pooler_transaction_mode,
            counters=counters,
            client_caps=client_caps,
        )
        try:
            err = await session.login()
        except CommandRefused as exc:
            raise _Refused(
                ErrorCode(exc.code)
                if exc.code in ErrorCode._value2member_map_
                else ErrorCode.NET_READ_ERROR,
                exc.message,
            ) from exc
        except PoolTimeout as exc:
            raise _Refused(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"all {pool.cap} backend connections of endpoint {target.endpoint_id} are busy",
            ) from exc
        if err is not None:
            await stream.send(seq, build_err(err.code, err.message, err.sqlstate))
            stream.writer.close()
            return
        await stream.send(seq, build_ok())
        st.sessions += 1
        st.live.append(counters)
        pool.clients += 1
        try:
            await session.run()
        finally:
            pool.clients -= 1
            st.sessions -= 1
            st.live.remove(counters)
            st.bytes_to_clients += counters.bytes_to_client
            st.bytes_from_clients += counters.bytes_from_client
            st.statements += counters.statements
            st.last_active = max(st.last_active or 0.0, counters.last_active)
            stream.writer.close()

    async def _authenticate(
        self,
        stream: PacketStream,
        response: HandshakeResponse41,
        seq: int,
        scramble: bytes,
        *,
        tls: bool,
        sni: str | None,
        client_ip: str,
    ) -> tuple[Route, Access, bytes, int]:
        target = route(response.user, sni, self.config.domain)
        if target is None:
            raise _Refused(
                ErrorCode.ACCESS_DENIED,
                "Access denied: name the endpoint in the user name as '<endpoint_id>.<role>', "
                f"or connect with TLS to '<endpoint_id>.{self.config.domain}' (SNI) "
                "with the plain role as user",
            )
        key = (target.endpoint_id, client_ip)
        if self.failures.blocked(key):
            self.logins["blocked"] += 1
            raise _Refused(
                ErrorCode.HOST_BLOCKED,
                f"Too many failed logins for this endpoint from {client_ip}; try again later",
            )
        self.failures.begin(key)
        failed = True
        try:
            plugin, answer, seq = await read_client_auth(stream, response, seq, scramble, tls=tls)
            if plugin != (response.auth_plugin or NATIVE_PLUGIN):
                self.logins[f"switched:{response.auth_plugin}"] += 1
            access = await self.control.get_access(target.endpoint_id, target.role)
            stage1 = None
            if access is not None:
                if plugin == CLEAR_PLUGIN:
                    stage1 = auth.verify_cleartext(answer, access.password_hash)
                else:
                    stage1 = auth.verify_native(answer, scramble, access.password_hash)
            failed = access is None or stage1 is None
        finally:
            self.failures.end(key, failed=failed)
        if access is None or stage1 is None:
            # One answer for a wrong password, an unknown role and an unknown endpoint.
            self.logins["failed"] += 1
            raise _Refused(
                ErrorCode.ACCESS_DENIED,
                f"Access denied for user '{response.user}'@'{client_ip}' "
                f"(using password: {'YES' if answer else 'NO'})",
            )
        if access.require_tls and not tls:
            raise _Refused(
                ErrorCode.ACCESS_DENIED,
                f"project of endpoint {target.endpoint_id} requires TLS; connect with SSL",
            )
        self.logins[f"ok:{plugin}"] += 1
        return target, access, stage1, seq

    async def _wake(self, target: Route) -> Backend:
        try:
            return await asyncio.wait_for(
                self.control.wake(target.endpoint_id), self.config.wake_timeout
            )
        except TimeoutError as exc:
            raise _Refused(
                ErrorCode.NET_READ_INTERRUPTED,
                f"endpoint {target.endpoint_id} did not become ready within "
                f"{self.config.wake_timeout:.0f}s; try again",
            ) from exc
        except QuotaExceeded as exc:
            raise _Refused(ErrorCode.USER_LIMIT_REACHED, exc.message) from exc
        except StateConflict as exc:
            raise _Refused(ErrorCode.NET_READ_INTERRUPTED, exc.message) from exc
        except (Conflict, NotFound) as exc:
            raise _Refused(ErrorCode.ACCESS_DENIED, exc.message) from exc
        except SelkieError as exc:
            raise _Refused(
                ErrorCode.NET_READ_INTERRUPTED,
                f"endpoint {target.endpoint_id} could not start: {exc.message.splitlines()[0]}",
            ) from exc

    # --- relay -----------------------------------------------------------------------------

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: BackendConnection,
        target: Route,
        first_bytes: bytes,
        *,
        tls: bool,
        scramble: bytes,
        client_caps: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        st = self.stats[target.endpoint_id]
        counters = Counters()
        st.sessions += 1
        st.live.append(counters)
        st.last_active = time.time()

        farewell = frame(
            0,
            build_err(
                ErrorCode.CONNECTION_KILLED,
                f"Connection to endpoint {target.endpoint_id} closed: its compute was suspended "
                "or stopped. Reconnect to wake it.",
            ),
        )[0]

        async def change_user(payload: bytes) -> tuple[bytes | None, bytes | None]:
            return await self._change_user(payload, target, scramble, conn.scramble, client_caps)

        try:
            if tls:
                writer.write(first_bytes)
                await writer.drain()

                async def on_change_user(payload: bytes) -> bytes | None:
                    to_server, to_client = await change_user(payload)
                    if to_client:
                        writer.write(to_client)
                        await writer.drain()
                    return to_server

                await async_relay(
                    client_reader=reader,
                    client_writer=writer,
                    server_reader=conn.reader,
                    server_writer=conn.writer,
                    counters=counters,
                    on_command=_ignore,
                    on_change_user=on_change_user,
                    farewell=farewell,
                )
                return
            client_sock, client_left = _detach(reader, writer)
            try:
                server_sock, server_left = _detach(conn.reader, conn.writer)
            except OSError:
                client_sock.close()
                raise
            done: asyncio.Future[None] = loop.create_future()

            def finished() -> None:
                def settle() -> None:
                    if not done.done():
                        done.set_result(None)

                loop.call_soon_threadsafe(settle)

            def change_user_blocking(payload: bytes) -> tuple[bytes | None, bytes | None]:
                future = asyncio.run_coroutine_threadsafe(change_user(payload), loop)
                return future.result(timeout=self.config.backend_timeout + 5)

            relay = ThreadedRelay(
                client=client_sock,
                server=server_sock,
                counters=counters,
                on_command=_ignore,
                on_change_user=change_user_blocking,
                on_done=finished,
                send_to_client=first_bytes + server_left,
                send_to_server=client_left,
                farewell=farewell,
            )
            self._relays.add(relay)
            try:
                relay.start()
            except RuntimeError:  # no thread could be made: nothing owns the sockets yet
                self._relays.discard(relay)
                client_sock.close()
                server_sock.close()
                raise
            try:
                await asyncio.shield(done)
            finally:
                self._relays.discard(relay)
                relay.close()
        finally:
            st.sessions -= 1
            st.live.remove(counters)
            st.bytes_to_clients += counters.bytes_to_client
            st.bytes_from_clients += counters.bytes_from_client
            st.statements += counters.statements
            st.last_active = max(st.last_active or 0.0, counters.last_active)
            for w in (writer, conn.writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _change_user(
        self,
        payload: bytes,
        target: Route,
        scramble: bytes,
        backend_scramble: bytes,
        client_caps: int,
    ) -> tuple[bytes | None, bytes | None]:
        """Rewrite COM_CHANGE_USER for the compute: check the client's token against the
        proxy's scramble, answer the compute's scramble. Returns (to the compute, to the
        client); a refusal ends the session after its ERR."""
        denied = frame(1, build_err(ErrorCode.ACCESS_DENIED, "Access denied"))[0]
        try:
            change = parse_change_user(payload, client_caps)
        except ProtocolError:
            return None, denied
        new = route(change.user, None, self.config.domain)
        role = change.user
        if new is not None:
            if new.endpoint_id != target.endpoint_id:
                msg = "COM_CHANGE_USER cannot move a session to another endpoint"
                return None, frame(1, build_err(ErrorCode.ACCESS_DENIED, msg))[0]
            role = new.role
        access = await self.control.get_access(target.endpoint_id, role)
        stage1 = None
        if access is not None and (change.auth_plugin or NATIVE_PLUGIN) == NATIVE_PLUGIN:
            stage1 = auth.verify_native(change.auth_response, scramble, access.password_hash)
        if access is None or stage1 is None:
            msg = f"Access denied for user '{change.user}' (using password: YES)"
            return None, frame(1, build_err(ErrorCode.ACCESS_DENIED, msg))[0]
        rewritten = build_change_user(
            dataclasses.replace(
                change,
                user=role,
                auth_response=auth.native_token(stage1, backend_scramble),
                auth_plugin=NATIVE_PLUGIN,
            ),
            client_caps,
        )
        return frame(0, rewritten)[0], None


def _ignore(_: int) -> None:
    return None


def _detach(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[socket.socket, bytes]:
    """Take a connection away from asyncio as a blocking socket, with any bytes asyncio had
    already read (none in practice: the handshake is strictly request/response)."""
    transport = writer.transport
    transport.pause_reading()  # type: ignore[attr-defined]
    # No public way to drain a StreamReader's buffer.
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009
    leftover = bytes(buffer)
    buffer.clear()
    raw = transport.get_extra_info("socket")
    fd = os.dup(raw.fileno())
    transport.abort()  # closes asyncio's descriptor; the duplicate keeps the connection
    return socket.socket(fileno=fd), leftover


async def _start_tls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    """Upgrade the client connection to TLS (server side).

    A client sends its ClientHello right behind the SSLRequest, so the StreamReader may
    already hold its first bytes, where the TLS layer would never see them and the handshake
    would hang. Such bytes are handed to the TLS protocol once it is in place, through the
    protocol interface only, so this works on the standard loop and on uvloop alike.
    """
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009 - no public accessor
    early = bytes(buffer)
    buffer.clear()
    if not early:
        await writer.start_tls(context)
        return
    transport = writer.transport
    original = transport.get_protocol()
    loop = asyncio.get_running_loop()

    def feed(proto: Any) -> None:
        # uvloop's TLS protocol is buffered but not an asyncio.BufferedProtocol subclass.
        if not hasattr(proto, "get_buffer"):
            proto.data_received(early)
            return
        view = memoryview(early)
        while view:
            buf = memoryview(proto.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    settled = False

    def inject() -> None:
        if settled:
            return  # start_tls failed before it installed its protocol (the client left)
        proto = transport.get_protocol()
        if proto is original:
            loop.call_soon(inject)  # start_tls has not installed its protocol yet
            return
        # start_tls installs the TLS protocol and queues its connection_made and the resumed
        # reading behind this callback: these bytes go in now, before any read from the
        # socket (uvloop delivers reads between two runs of the callback queue). The TLS
        # protocol only buffers them until its handshake starts.
        feed(proto)

    loop.call_soon(inject)
    try:
        await writer.start_tls(context)
    finally:
        settled = True
