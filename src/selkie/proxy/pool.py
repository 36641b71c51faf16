"""Backend connections shared by pooled client sessions, per endpoint, with a hard cap.

A backend is a logged-in connection to the compute for one role (and one set of
response-shaping capabilities and charset, so any client of that kind can read what it
sends). Clients beyond the cap wait in a queue; past ``wait_timeout`` they get a clear
error. Dead backends (the compute suspended) are dropped when next taken from the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from selkie.proxy.stream import PacketStream
from selkie.proxy.wire import Capability, Command

# Capabilities that change how responses are encoded: backends are shared only between
# clients that agree on them.
FORMAT_CAPS = (
    Capability.DEPRECATE_EOF
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.SESSION_TRACK
    | Capability.FOUND_ROWS
    | Capability.LOCAL_FILES
    | Capability.MULTI_STATEMENTS
    | Capability.LONG_FLAG
    | Capability.PROTOCOL_41
)


@dataclass(frozen=True)
class PoolKey:
    role: str
    caps: int
    charset: int


# Statements kept prepared per backend connection (the server's max_prepared_stmt_count,
# 16382 by default, is shared by all its connections).
MAX_STATEMENTS = 256


class PoolTimeout(Exception):
    """No backend became free in time."""


@dataclass
class BackendStatement:
    id: int  # the compute's statement id
    types: bytes | None = None  # parameter types last bound on it (they stick until re-sent)


@dataclass(eq=False)
class Backend:
    key: PoolKey
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stream: PacketStream
    # Session state as applied on this connection, to replay only what differs.
    database: str | None = None
    sets: dict[str, str] = field(default_factory=dict)
    last_insert_id: int | None = None
    multi_statements: bool | None = None
    # Statements prepared here, by SQL text, least recently used first: every client of
    # this backend executes through them, so a statement is prepared once per backend,
    # not once per client that lands here.
    statements: OrderedDict[bytes, BackendStatement] = field(default_factory=OrderedDict)
    owner: object | None = None  # the client session that used it last
    # The last owner ran something that may change session state the proxy does not track
    # (a stored procedure): the next client gets the backend reset.
    dirty: bool = False

    def alive(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def forget_session(self) -> None:
        """After COM_RESET_CONNECTION: the server dropped variables and statements."""
        self.sets.clear()
        self.statements.clear()
        self.last_insert_id = None
        self.multi_statements = None
        self.dirty = False

    def statement(self, sql: bytes) -> BackendStatement | None:
        found = self.statements.get(sql)
        if found is not None:
            self.statements.move_to_end(sql)
        return found

    def remember(self, sql: bytes, stmt_id: int) -> BackendStatement:
        """Note a statement prepared here; one prepared earlier for the same SQL, and the
        least recently used beyond the cap, are closed on the server (COM_STMT_CLOSE has no
        response, so this costs no round trip)."""
        old = self.statements.pop(sql, None)
        if old is not None and old.id != stmt_id:
            self._close_statement(old.id)
        stmt = self.statements[sql] = BackendStatement(stmt_id)
        while len(self.statements) > MAX_STATEMENTS:
            self._close_statement(self.statements.popitem(last=False)[1].id)
        return stmt

    def _close_statement(self, stmt_id: int) -> None:
        self.stream.write(0, bytes([Command.STMT_CLOSE]) + stmt_id.to_bytes(4, "little"))


class EndpointPool:
    def __init__(self, endpoint_id: str, *, cap: int, wait_timeout: float) -> None:
        self.endpoint_id = endpoint_id
        self.cap = cap
        self.wait_timeout = wait_timeout
        self._idle: dict[PoolKey, list[Backend]] = {}
        self._cond = asyncio.Condition()
        self.total = 0
        self.in_use = 0
        self.waiting = 0
        self.clients = 0
        self.pinned = 0
        self.peak = 0  # most backends open at once (tests and metrics)
        self.resets = 0  # backends reset before another client used them

    def metrics(self) -> dict[str, int]:
        idle = sum(len(v) for v in self._idle.values())
        return {
            "clients": self.clients,
            "backends_in_use": self.in_use,
            "backends_idle": idle,
            "clients_waiting": self.waiting,
            "pinned_sessions": self.pinned,
            "backends_peak": self.peak,
            "backend_resets": self.resets,
        }

    async def acquire(
        self,
        key: PoolKey,
        connect: Callable[[], Awaitable[Backend]],
        *,
        prefer: Backend | None = None,
    ) -> Backend:
        """A backend for ``key``: ``prefer`` (the one this client used last, which needs no
        reset) when it is idle, else any idle one, else a new one under the cap, else wait."""
        deadline = time.monotonic() + self.wait_timeout
        async with self._cond:
            while True:
                idle = self._idle.get(key)
                if prefer is not None and idle and prefer in idle and prefer.alive():
                    idle.remove(prefer)
                    self.in_use += 1
                    return prefer
                while idle:
                    backend = idle.pop()
                    if backend.alive():
                        self.in_use += 1
                        return backend
                    backend.close()
                    self.total -= 1
                if self.total < self.cap:
                    self.total += 1
                    self.in_use += 1
                    self.peak = max(self.peak, self.total)
                    break
                # Full: make room by closing an idle backend of another kind, if any.
                other = next((k for k, v in self._idle.items() if v and k != key), None)
                if other is not None:
                    self._idle[other].pop().close()
                    self.total -= 1
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout
                self.waiting += 1
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except TimeoutError:
                    raise PoolTimeout from None
                finally:
                    self.waiting -= 1
        try:
            return await connect()
        except BaseException:
            async with self._cond:
                self.total -= 1
                self.in_use -= 1
                self._cond.notify()
            raise

    async def release(self, backend: Backend, *, broken: bool = False) -> None:
        async with self._cond:
            self.in_use -= 1
            if broken or not backend.alive():
                backend.close()
                self.total -= 1
            else:
                self._idle.setdefault(backend.key, []).append(backend)
            self._cond.notify()

    async def close(self) -> None:
        async with self._cond:
            for backends in self._idle.values():
                for backend in backends:
                    backend.close()
                    self.total -= 1
            self._idle.clear()
