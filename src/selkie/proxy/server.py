"""The MySQL-protocol proxy: one address for every endpoint.

Each client connection runs through the same steps, a module each::

    handshake ─▶ authenticate ─▶ wake ─▶ dial ─▶ passthrough
    (handshake)  (connect)                       (passthrough, relay)
                       └── a -pooler login ─▶ the pooler (pooler/)

The proxy authenticates clients itself against the stored hashes (no compute needed),
wakes the endpoint's compute through the :class:`ControlPlane`, holds the client while it
starts, logs in to it, then relays. It counts bytes and statements per endpoint
(:mod:`selkie.proxy.stats`) and reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass

from selkie.controlplane import Activity, ControlPlane
from selkie.errors import SelkieError
from selkie.mysql.stream import frame
from selkie.mysql.wire import ProtocolError
from selkie.proxy.admission import TOO_MANY, Admission
from selkie.proxy.connect import AuthFailures, ConnectConfig, Connector, Refused
from selkie.proxy.handshake import Hello, handshake, sni_capture
from selkie.proxy.http.server import HttpFront
from selkie.proxy.passthrough import Passthrough
from selkie.proxy.pooler.pool import EndpointPool
from selkie.proxy.pooler.pooler import Pooler
from selkie.proxy.proxyproto import read_proxy_header
from selkie.proxy.sessions import Live, LiveSessions, session_ids
from selkie.proxy.stats import ProxyStats
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

SERVER_VERSION = "5.5.5-10.11.19-MariaDB-Selkie"


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 6033
    domain: str = "selkie.localhost"
    tls: ssl.SSLContext | None = None
    wake_timeout: float = 30.0
    # One deadline for everything before a client is authenticated (TLS included).
    handshake_timeout: float = 10.0
    # Connections allowed in that phase at once: in all, and from one address.
    max_preauth: int = 1000
    max_preauth_per_address: int = 256
    # Connections come through a load balancer that sends the PROXY protocol header.
    proxy_protocol: bool = False
    # Refuse logins without TLS (on by default where the proxy listens beyond loopback).
    require_tls: bool = False
    # SQL over HTTP (database-js): where to listen (None: not at all), and the TLS
    # certificate and key files it serves (None: plain HTTP).
    http_listen: tuple[str, int] | None = None
    http_tls_files: tuple[str, str] | None = None
    # Reverse proxies whose X-Forwarded-* headers SQL over HTTP believes (none by default).
    http_trusted_proxies: tuple[str, ...] = ()
    backend_timeout: float = 10.0
    # Failed logins allowed per (endpoint as named, client address) in the window.
    auth_failures_allowed: int = 10
    auth_failure_window: float = 60.0
    report_interval: float = 1.0
    server_version: str = SERVER_VERSION
    pool_wait_timeout: float = 30.0
    pool_max_packet: int = 64 * 2**20
    # Plaintext sessions: "auto" (the compiled relay when built), "c" or "python".
    relay: str = "auto"


class ProxyServer:
    def __init__(self, control: ControlPlane, config: ProxyConfig) -> None:
        self.control = control
        self.config = config
        self.stats = ProxyStats()
        self.admission = Admission(
            total=config.max_preauth, per_address=config.max_preauth_per_address
        )
        self.failures = AuthFailures(config.auth_failures_allowed, config.auth_failure_window)
        # Login outcomes by kind ("ok:<plugin>", "switched:<plugin>", "failed", "delayed").
        self.logins: Counter[str] = Counter()
        self.connector = Connector(
            control,
            ConnectConfig(
                domain=config.domain,
                wake_timeout=config.wake_timeout,
                backend_timeout=config.backend_timeout,
                require_tls=config.require_tls,
            ),
            failures=self.failures,
            logins=self.logins,
            sessions=self.stats.sessions,
        )
        self.passthrough = Passthrough(
            control,
            domain=config.domain,
            backend_timeout=config.backend_timeout,
            verify=self.connector.verify,
            relay=config.relay,
        )
        # Sessions by greeting id, for KILL with the ids drivers hold (sessions.py).
        self.live = LiveSessions()
        self.pooler = Pooler(
            self.connector,
            self.stats,
            self.live,
            wait_timeout=config.pool_wait_timeout,
            max_packet=config.pool_max_packet,
            relay=config.relay,
        )
        self.http = (
            HttpFront(
                self.connector,
                self.stats,
                self.pooler,
                host=config.http_listen[0],
                port=config.http_listen[1],
                ssl_files=config.http_tls_files,
                trusted_proxies=config.http_trusted_proxies,
                # The same pre-auth rules as MySQL clients: one admission, one deadline.
                admission=self.admission,
                preauth_timeout=config.handshake_timeout,
            )
            if config.http_listen is not None
            else None
        )
        # Where the last login per endpoint spent its time (ms): auth, wake, backend login.
        self.last_timings: dict[str, dict[str, float]] = {}
        self._ids = session_ids()
        self._server: asyncio.Server | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        if config.tls is not None:
            sni_capture(config.tls)
        # Relay threads block in syscalls; small stacks keep thousands of sessions cheap.
        threading.stack_size(512 * 1024)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def pools(self) -> dict[str, EndpointPool]:
        return self.pooler.pools

    async def start(self) -> None:
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
        if self.http is not None:
            await self.http.start()

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        if self._server is not None:
            self._server.close()
        await cancel(self._reporter)
        self.passthrough.close()
        for task in list(self._sessions):
            await cancel(task)
        await self.pooler.close()
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
        return self.stats.activity()

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
        """One client connection through the steps, each answering with what comes next."""
        peer = writer.get_extra_info("peername")
        client_ip = str(peer[0]) if isinstance(peer, tuple) else "local"
        # Behind a load balancer the address is known once its PROXY header is read.
        counted: str | None = None if self.config.proxy_protocol else client_ip
        if not self.admission.enter(counted):
            writer.write(frame(0, TOO_MANY)[0])
            return
        session_id = next(self._ids)
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                if counted is None:
                    client_ip = await read_proxy_header(reader, client_ip)
                    if not self.admission.identify(client_ip):
                        writer.write(frame(0, TOO_MANY)[0])
                        return
                    counted = client_ip
                hello = await handshake(
                    reader,
                    writer,
                    connection_id=session_id,
                    server_version=self.config.server_version,
                    tls=self.config.tls,
                    timeout=self.config.handshake_timeout,
                    client_ip=client_ip,
                )
                t0 = time.perf_counter()
                login = await self.connector.authenticate(hello)
        finally:
            self.admission.leave(counted)
        if isinstance(login, Refused):
            return await self._refuse(hello, hello.seq, login)
        auth_ms = (time.perf_counter() - t0) * 1000
        if login.route.pooled:
            refused = await self.pooler.serve(hello, login, session_id)
            if refused is not None:
                await self._refuse(hello, login.seq, refused)
            return
        dialled = await self.connector.dial(
            login, hello.response, hello.client_caps, connection_id=session_id
        )
        if isinstance(dialled, Refused):
            return await self._refuse(hello, login.seq, dialled)
        endpoint_id = login.route.endpoint_id
        self.last_timings[endpoint_id] = {
            "client_auth_ms": auth_ms,
            "wake_ms": dialled.wake_ms,
            "backend_login_ms": dialled.login_ms,
        }
        conn = dialled.backend
        # The compute's own OK to the login, in the client's sequence.
        first, _ = frame(login.seq, conn.first_reply)
        role = login.route.role
        self.live.add(session_id, Live(endpoint_id, role, lambda: conn.thread_id, _nothing))
        try:
            with self.stats.session(endpoint_id) as counters:
                await self.passthrough.run(
                    hello,
                    conn,
                    endpoint_id,
                    first,
                    counters,
                    kill=lambda payload: self.live.kill(payload, endpoint_id, role),
                )
        finally:
            self.live.remove(session_id)
            for w in (writer, conn.writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _refuse(self, hello: Hello, seq: int, refused: Refused) -> None:
        await hello.stream.send(seq, refused.packet())
        hello.writer.close()


def _nothing() -> None:
    """A relayed session always holds its compute connection: nothing to end here."""
