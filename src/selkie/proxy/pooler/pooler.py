"""Serving ``-pooler`` logins: the session borrows compute connections from its endpoint's
pool instead of holding one of its own."""

from __future__ import annotations

import dataclasses
import functools

from selkie.mysql.packets import HandshakeResponse41, build_ok
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import ErrorCode
from selkie.proxy.connect import Authenticated, Connector, Refused
from selkie.proxy.handshake import Hello
from selkie.proxy.pooler.backends import FORMAT_CAPS, Backend, PoolKey
from selkie.proxy.pooler.lane import check, lane_for
from selkie.proxy.pooler.pool import EndpointPool, PoolTimeout
from selkie.proxy.pooler.runner import CommandRefused, CommandRunner
from selkie.proxy.pooler.session import PooledSession
from selkie.proxy.relay import Counters
from selkie.proxy.sessions import Live, LiveSessions
from selkie.proxy.stats import ProxyStats

RELAY_LIMIT = 2**31
DEFAULT_MAX_PACKET = 64 * 2**20


class Pooler:
    def __init__(
        self,
        connector: Connector,
        stats: ProxyStats,
        live: LiveSessions,
        *,
        wait_timeout: float,
        max_packet: int = DEFAULT_MAX_PACKET,
        relay: str = "auto",
    ) -> None:
        self.connector = connector
        self.stats = stats
        self.live = live  # every session by greeting id, for KILL (sessions.py)
        self.wait_timeout = wait_timeout
        # "python" keeps every pooled command in Python; otherwise plain ones take the
        # compiled fast lane where it is built (lane.py), as the session relay does.
        check(relay)
        self.relay = relay
        # The largest command a pooled client may send: commands are read whole before a
        # backend is borrowed, so this bounds what one session holds (ERR 1153 beyond).
        self.max_packet = max_packet
        self.pools: dict[str, EndpointPool] = {}

    async def close(self) -> None:
        """Close every pool's idle backends (the proxy stops)."""
        for pool in self.pools.values():
            await pool.close()

    def pool_for(self, login: Authenticated) -> EndpointPool:
        endpoint_id = login.route.endpoint_id
        pool = self.pools.get(endpoint_id)
        if pool is None:
            pool = self.pools[endpoint_id] = EndpointPool(
                endpoint_id,
                cap=login.access.pooler_max_backends,
                wait_timeout=self.wait_timeout,
                lane=functools.partial(lane_for, self.relay, max_packet=self.max_packet),
            )
        pool.cap = login.access.pooler_max_backends
        return pool

    async def serve(
        self, hello: Hello, login: Authenticated, session_id: int = 0
    ) -> Refused | None:
        """Run a pooled session until the client leaves; a refusal for the client when it
        cannot begin (the pooler is off, the endpoint cannot wake, every backend is busy).
        ``session_id``: its greeting's, which another session's KILL may name."""
        endpoint_id = login.route.endpoint_id
        if not login.access.pooler_enabled:
            return Refused(
                ErrorCode.ACCESS_DENIED,
                f"the pooler is not enabled for endpoint {endpoint_id}; enable it with "
                'PATCH …/endpoints/{id} {"endpoint": {"pooler_enabled": true}}',
            )
        pool = self.pool_for(login)
        client_caps = hello.client_caps
        key = PoolKey(
            role=login.route.role, caps=client_caps & FORMAT_CAPS, charset=hello.response.charset
        )
        response = backend_response(hello.response)

        async def connect() -> Backend:
            outcome = await self.connector.dial(login, response, client_caps)
            if isinstance(outcome, Refused):
                raise CommandRefused(outcome.code, outcome.message, outcome.sqlstate)
            conn = outcome.backend
            return Backend(
                key=key,
                reader=conn.reader,
                writer=conn.writer,
                stream=PacketStream(conn.reader, conn.writer, limit=RELAY_LIMIT),
                thread_id=conn.thread_id,
            )

        stream = hello.stream
        stream.limit = self.max_packet
        counters = Counters()
        session = PooledSession(
            CommandRunner(
                client=stream,
                pool=pool,
                key=key,
                connect=connect,
                database=hello.response.database,
                transaction_mode=login.access.pooler_transaction_mode,
                counters=counters,
                client_caps=client_caps,
            )
        )
        session.attach_lane(pool.lane if not hello.tls else None)
        try:
            err = await session.login()
        except CommandRefused as exc:
            return Refused(exc.code, exc.message, exc.sqlstate)
        except PoolTimeout:
            return Refused(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"all {pool.cap} backend connections of endpoint {endpoint_id} are busy",
            )
        if err is not None:
            return Refused(err.code, err.message, err.sqlstate)
        await stream.send(login.seq, build_ok())
        role = login.route.role
        session.kill = lambda payload: self.live.kill(payload, endpoint_id, role)

        def thread_id() -> int | None:
            backend = session.serving_backend()
            return backend.thread_id if backend is not None else None

        self.live.add(session_id, Live(endpoint_id, role, thread_id, hello.writer.close))
        with self.stats.session(endpoint_id, counters):
            try:
                with pool.client():
                    await session.run()
            finally:
                self.live.remove(session_id)
        return None


def backend_response(response: HandshakeResponse41) -> HandshakeResponse41:
    """The login a pooled backend makes: the client's, without its database (the session
    state decides that per command)."""
    return dataclasses.replace(response, database=None)
