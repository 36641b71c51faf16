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
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Capability, Command

if TYPE_CHECKING:
    from selkie.proxy.pooler.lane import Lane

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
    | Capability.MARIADB_EXTENDED_METADATA
)


@dataclass(frozen=True)
class PoolKey:
    role: str
    caps: int
    charset: int


# Statements kept prepared per backend connection. The server's max_prepared_stmt_count
# is shared by all its connections: computes are configured with room for about this many
# on every pooled backend (compute.mariadb.render_config), and a backend gives back half of
# its own when the server has no room left (proxy.pooled).
MAX_STATEMENTS = 64
# (database, tracked variables, SQL)
StatementKey = tuple[str | None, frozenset[tuple[str, str]], bytes]


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
    thread_id: int = 0  # the compute's id for this connection (what KILL takes)
    # Session state as applied on this connection, to replay only what differs.
    database: str | None = None
    sets: dict[str, str] = field(default_factory=dict)
    last_insert_id: int | None = None
    multi_statements: bool | None = None
    # Statements prepared here, by the session state they were prepared in (database and
    # tracked variables: both bind a statement) and SQL text, least recently used first:
    # clients in that state execute through them, so a statement is prepared once per
    # backend, not once per client that lands here.
    statements: OrderedDict[StatementKey, BackendStatement] = field(default_factory=OrderedDict)
    owner: object | None = None  # the client session that used it last
    # The last owner ran something that may change session state the proxy does not track
    # (a stored procedure): the next client gets the backend reset.
    dirty: bool = False
    # A command was sent and its response not read to its end (its client left, or the
    # reading failed or was cancelled mid-way): the compute may still be sending it, so
    # the connection is closed on release, never lent out.
    answering: bool = False
    # The fast lane's handle on its socket, once it has been there.
    lane_conn: Any = field(default=None, repr=False)

    def alive(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def reusable(self) -> bool:
        """Whether another command (another client's) may be sent here: open, and the
        last response read to its end."""
        return not self.answering and self.alive()

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

    def _statement_key(self, sql: bytes) -> StatementKey:
        return (self.database, frozenset(self.sets.items()), sql)

    def statement(self, sql: bytes) -> BackendStatement | None:
        """The statement for ``sql`` prepared here in the session state now in place."""
        key = self._statement_key(sql)
        found = self.statements.get(key)
        if found is not None:
            self.statements.move_to_end(key)
        return found

    def remember(self, sql: bytes, stmt_id: int) -> BackendStatement:
        """Note a statement prepared here in the state now in place; one prepared earlier
        for the same, and the least recently used beyond the cap, are closed on the server
        (COM_STMT_CLOSE has no response, so this costs no round trip)."""
        key = self._statement_key(sql)
        old = self.statements.pop(key, None)
        if old is not None and old.id != stmt_id:
            self._close_statement(old.id)
        stmt = self.statements[key] = BackendStatement(stmt_id)
        self._close_oldest(len(self.statements) - MAX_STATEMENTS)
        return stmt

    def shrink_statements(self) -> None:
        """Close the least recently used half of the statements kept here."""
        self._close_oldest((len(self.statements) + 1) // 2)

    def _close_oldest(self, count: int) -> None:
        for _ in range(count):
            self._close_statement(self.statements.popitem(last=False)[1].id)

    def drop_statement(self, stmt: BackendStatement) -> None:
        """Close ``stmt`` on the server, and forget it if it is still kept here."""
        for key, kept in self.statements.items():
            if kept is stmt:
                del self.statements[key]
                break
        self._close_statement(stmt.id)

    def _close_statement(self, stmt_id: int) -> None:
        self.stream.write(0, bytes([Command.STMT_CLOSE]) + stmt_id.to_bytes(4, "little"))


class EndpointPool:
    """Backends of one endpoint. A released backend goes straight to the longest-waiting
    client of its kind (first come, first served; no wake-up that finds nothing), else to
    the idle list. Everything here runs on the event loop between awaits, so no lock."""

    def __init__(
        self,
        endpoint_id: str,
        *,
        cap: int,
        wait_timeout: float,
        lane: Callable[..., Lane | None] | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._cap = cap
        self._total = 0
        self.wait_timeout = wait_timeout
        self._idle: dict[PoolKey, list[Backend]] = {}
        # Clients waiting, oldest first. A future's result: a backend handed over (already
        # counted in use), or None: room was made, try again.
        self._waiters: deque[tuple[PoolKey, asyncio.Future[Backend | None]]] = deque()
        # The fast lane (lane.py) holds idle backends and runs parked sessions' plain
        # commands; what it holds is counted here too (idle, in use), not in total twice.
        self.lane = (
            lane(wait_timeout=wait_timeout, on_release=self._give, on_dead=self._dead)
            if lane is not None
            else None
        )
        self._sync_room()
        self.held = 0  # backends in use by sessions in Python (the lane counts its own)
        self.waiting = 0
        self.clients = 0
        self.pinned = 0
        self.peak = 0  # most backends open at once (tests and metrics)
        self.resets = 0  # backends reset before another client used them

    @property
    def cap(self) -> int:
        return self._cap

    @cap.setter
    def cap(self, value: int) -> None:
        self._cap = value
        self._sync_room()

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = value
        self._sync_room()

    @property
    def in_use(self) -> int:
        """Backends lent to sessions, whether they run in Python or in the lane."""
        return self.held + (self.lane.c.in_use if self.lane is not None else 0)

    def _sync_room(self) -> None:
        """The lane opens no backends: it asks Python to when there is room for one."""
        if self.lane is not None:
            self.lane.c.set_room(self._cap - self._total)

    def metrics(self) -> dict[str, int]:
        idle = sum(len(v) for v in self._idle.values())
        waiting = self.waiting
        if self.lane is not None:
            idle += self.lane.c.idle
            waiting += self.lane.c.waiting
        return {
            "clients": self.clients,
            "backends_in_use": self.in_use,
            "backends_idle": idle,
            "clients_waiting": waiting,
            "pinned_sessions": self.pinned,
            "backends_peak": self.peak,
            "backend_resets": self.resets,
            "fast_lane_commands": self.lane.c.commands if self.lane is not None else 0,
        }

    async def acquire(
        self,
        key: PoolKey,
        connect: Callable[[], Awaitable[Backend]],
        *,
        prefer: Backend | None = None,
    ) -> Backend:
        """A backend for ``key``: ``prefer`` (the one this client used last, which needs no
        reset) when it is idle, else any idle one, else a new one under the cap, else wait
        for one to be handed over."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            backend = self._take_idle(key, prefer)
            if backend is not None:
                return backend
            if self.total < self.cap or self._evict_other_kind(key):
                self.total += 1
                self.held += 1
                self.peak = max(self.peak, self.total)
                break
            handed = await self._wait(key, deadline)
            if handed is not None:
                if handed.reusable():
                    return handed
                # It died while idle or on its way (the compute went away): its slot is
                # this client's to fill with a new one, not a prize for whoever asks next.
                handed.close()
                break
        try:
            return await connect()
        except BaseException:
            self.total -= 1
            self.held -= 1
            self._wake_first()
            raise

    def _take_idle(self, key: PoolKey, prefer: Backend | None) -> Backend | None:
        idle = self._idle.get(key)
        if not idle:
            if self.lane is not None:
                backend = self.lane.take(key, prefer)
                if backend is not None:
                    self.held += 1
                    return backend
            return None
        if prefer is not None and prefer in idle and prefer.reusable():
            idle.remove(prefer)
            self.held += 1
            return prefer
        while idle:
            backend = idle.pop()
            if backend.reusable():
                self.held += 1
                return backend
            backend.close()
            self.total -= 1
        return None

    def _evict_other_kind(self, key: PoolKey) -> bool:
        """At the cap: close an idle backend of another kind to make room, if there is one."""
        other = next((k for k, v in self._idle.items() if v and k != key), None)
        if other is not None:
            self._idle[other].pop().close()
        elif self.lane is not None and (evicted := self.lane.evict(key)) is not None:
            evicted.close()
        else:
            return False
        self.total -= 1
        return True

    async def _wait(self, key: PoolKey, deadline: float) -> Backend | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PoolTimeout
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Backend | None] = loop.create_future()
        entry = (key, waiter)
        self._waiters.append(entry)
        self.waiting += 1
        if self.lane is not None:  # backends the lane frees come here first
            self.lane.c.waiting_for(self.lane.key(key), 1)
        timer = loop.call_later(remaining, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            # Cancelled (the client left) just as a backend or a retry was handed over:
            # pass it on to the next waiter rather than lose it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is None:
                    self._wake_first()
                else:
                    self.held -= 1
                    self._give(handed)
            raise
        finally:
            timer.cancel()
            self.waiting -= 1
            if self.lane is not None:
                self.lane.c.waiting_for(self.lane.key(key), -1)
            if waiter.cancelled() or not waiter.done() or waiter.exception() is not None:
                # Still queued (it timed out, or its client left): a waiter handed something
                # was taken off the queue by whoever handed it. (A failed remove would cost
                # a scan of the queue and the repr of a Backend for the error's message.)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)

    def _give(self, backend: Backend) -> None:
        """A free backend (not counted in use): to the oldest waiter of its kind, else idle,
        and a waiter of another kind is told to try again (it may close this one to make
        room for its own)."""
        for i, (key, waiter) in enumerate(self._waiters):
            if key == backend.key and not waiter.done():
                del self._waiters[i]
                self.held += 1
                waiter.set_result(backend)
                return
        if self.lane is None or not self.lane.give(backend):
            self._idle.setdefault(backend.key, []).append(backend)
        self._wake_first()

    def _dead(self, backend: Backend) -> None:
        """An idle backend in the lane was closed by the compute."""
        backend.close()
        self.total -= 1
        self._wake_first()

    def _wake_first(self) -> None:
        """Room was made (a backend closed, or idle of a kind nobody waits for): the oldest
        waiter tries again."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def release(self, backend: Backend, *, broken: bool = False) -> None:
        """A backend a session is done with: back to the pool, or closed when ``broken``
        or not reusable (a response not read to its end: it would reach the next user)."""
        self.held -= 1
        if broken or not backend.reusable():
            backend.close()
            self.total -= 1
            self._wake_first()
        else:
            self._give(backend)

    async def close(self) -> None:
        for backends in self._idle.values():
            for backend in backends:
                backend.close()
                self.total -= 1
        self._idle.clear()
        if self.lane is not None:
            for backend in self.lane.close():
                backend.close()
                self.total -= 1
            self.lane = None


def _expire(waiter: asyncio.Future[Backend | None]) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeout())
