"""The pooler's fast lane (``_lane.c``): what Python tells it, and what it hands back.

An endpoint's pool has one lane when the extension is built (and ``proxy_relay`` is not
``python``). A pooled session with nothing pinned parks there between its commands; the
lane runs the commands that need no decision — a plain prepared statement, a query text
found plain before — on an idle backend in the same state, and hands the session back for
anything else. What the lane compares is kept small: a session's or backend's state (its
database, tracked variables and multi-statement option) is a signature number, a
statement's SQL an id, both given out here and never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from selkie.errors import ConfigError
from selkie.proxy.pooler.backends import Backend, PoolKey
from selkie.proxy.pooler.sqlscan import Effect
from selkie.proxy.pooler.state import SessionState

log = logging.getLogger(__name__)

try:
    from selkie.proxy.pooler import _lane
except ImportError as exc:  # not built: the pooler runs every command in Python
    _lane = None  # type: ignore[assignment]
    _missing = str(exc)

# Signatures and SQL ids given out per lane, at most (then: not for the lane).
MAX_IDS = 1 << 16
EXPIRE_EVERY = 0.25  # seconds between checks for parked sessions waiting too long
# (client id, SQL id, parameters, their types, plain); (SQL id, compute's id, types)
SessionStatement = tuple[int, int, int, bytes | None, bool]
BackendStatement = tuple[int, int, bytes | None]


def available() -> bool:
    return _lane is not None


def plain(effect: Effect) -> bool:
    """Whether a statement with this effect leaves nothing for the pooler to note."""
    return not (
        effect.pin
        or effect.sets
        or effect.database
        or effect.reads_last_insert_id
        or effect.untracked
        or effect.unpin_lock_tables
        or effect.lock_tables
    )


def buffered(reader: asyncio.StreamReader) -> bool:
    """Whether the stream holds bytes not read yet (asyncio has no public way to ask)."""
    return bool(reader._buffer)  # type: ignore[attr-defined]


def socket_fd(writer: asyncio.StreamWriter) -> int | None:
    """The descriptor of a plaintext socket stream, None for TLS or anything else."""
    if writer.get_extra_info("sslcontext") is not None:
        return None
    sock = writer.get_extra_info("socket")
    return sock.fileno() if sock is not None else None


class Lane:
    """One pool's lane, watched by the running event loop."""

    def __init__(
        self,
        *,
        wait_timeout: float,
        on_release: Callable[[Backend], None],
        on_dead: Callable[[Backend], None],
        max_packet: int = 64 * 2**20,
    ) -> None:
        assert _lane is not None
        self._on_release = on_release
        self._on_dead = on_dead
        # The pooler's packet limit: the lane runs no command above it (Python refuses it)
        # and reads no more of a client than its next command (or that command's header).
        self.c = _lane.Lane(self._released, self._died, wait_timeout, max_packet)
        self._keys: dict[PoolKey, int] = {}
        self._sigs: dict[tuple[Any, ...], int] = {}
        self._sql: dict[bytes, int] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.c.fileno(), self.c.poll)
        self._timer = self._loop.call_later(EXPIRE_EVERY, self._expire)

    def close(self) -> list[Backend]:
        """Stop watching; the idle backends it held, for the pool to close."""
        self._timer.cancel()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.c.fileno())
        return [self._back(conn) for conn in self.c.drain()]

    def _expire(self) -> None:
        self.c.expire()
        self._timer = self._loop.call_later(EXPIRE_EVERY, self._expire)

    # --- numbers for what the lane compares ------------------------------------------------

    def key(self, key: PoolKey) -> int:
        found = self._keys.get(key)
        if found is None:
            found = self._keys[key] = len(self._keys)
        return found

    def _intern(self, table: dict[Any, int], value: Any) -> int:
        found = table.get(value)
        if found is None:
            if len(table) >= MAX_IDS:
                return -1  # never matches: such sessions and statements stay in Python
            found = table[value] = len(table)
        return found

    def session_sig(self, st: SessionState) -> int:
        return self._intern(
            self._sigs, (st.database, frozenset(st.sets.items()), st.multi_statements)
        )

    def backend_sig(self, b: Backend) -> int:
        if b.dirty:
            return -1
        return self._intern(self._sigs, (b.database, frozenset(b.sets.items()), b.multi_statements))

    def sql_id(self, sql: bytes) -> int:
        return self._intern(self._sql, sql)

    def session_statements(self, st: SessionState) -> list[SessionStatement]:
        return [
            (cid, self.sql_id(p.sql), p.num_params, p.param_types, plain(p.effect))
            for cid, p in st.prepared.items()
        ]

    def backend_statements(self, b: Backend) -> list[BackendStatement]:
        state = frozenset(b.sets.items())
        return [
            (self.sql_id(sql), bs.id, bs.types)
            for (database, sets, sql), bs in b.statements.items()
            if database == b.database and sets == state
        ]

    # --- backends --------------------------------------------------------------------------

    def conn(self, b: Backend) -> Any | None:
        """The lane's handle on ``b``, None when it cannot be in the lane (TLS, or bytes
        unread or unsent on Python's side)."""
        if b.lane_conn is None:
            fd = socket_fd(b.writer)
            if fd is None:
                return None
            b.lane_conn = _lane.Conn(b, fd)
        transport = b.writer.transport
        if buffered(b.reader) or transport.get_write_buffer_size() or not b.reusable():
            return None
        return b.lane_conn

    def give(self, b: Backend) -> bool:
        """Hand a free backend to the lane (False: it cannot go there)."""
        entered = self.enter(b)
        if entered is None:
            return False
        try:
            self.c.give(entered[0], self.key(b.key), *entered[1:])
        except OSError:  # the lane cannot watch it (out of descriptors): Python keeps it
            b.writer.transport.resume_reading()  # type: ignore[attr-defined]
            return False
        return True

    def enter(self, b: Backend) -> tuple[Any, int, list[BackendStatement]] | None:
        """A backend going into the lane: its handle, signature and statements (None when it
        cannot go there); Python's transport stops reading it."""
        conn = self.conn(b)
        if conn is None:
            return None
        b.writer.transport.pause_reading()  # type: ignore[attr-defined]
        return conn, self.backend_sig(b), self.backend_statements(b)

    def take(self, key: PoolKey, prefer: Backend | None) -> Backend | None:
        conn = self.c.take(self.key(key), prefer.lane_conn if prefer is not None else None)
        return None if conn is None else self._back(conn)

    def evict(self, key: PoolKey) -> Backend | None:
        conn = self.c.evict(self.key(key))
        return None if conn is None else self._back(conn)

    @staticmethod
    def _back(conn: Any) -> Backend:
        """A backend out of the lane, Python's to read again."""
        b: Backend = conn.backend
        b.writer.transport.resume_reading()  # type: ignore[attr-defined]
        return b

    def _released(self, b: Backend) -> None:
        self._on_release(self._back(b.lane_conn))

    def _died(self, b: Backend) -> None:
        self._on_dead(self._back(b.lane_conn))

    def stray(self) -> list[str]:
        """What breaks the lane's invariant, for tests (empty: nothing): a backend counted
        in use has a session that is reading or writing it — its command's answer on the
        way (busy), or bound to a parked session that keeps it between commands (a
        transaction open, or session mode) — and the count is the backends so held."""
        problems = []
        held = 0
        for b in self.c.backends():
            if b["idle"]:
                if b["session"] or b["busy"]:
                    problems.append(f"idle yet held: {b}")
                continue
            held += 1
            if not (
                b["session"]
                and b["session_parked"]
                and b["session_bound"]
                and not b["session_waiting"]
                and (b["busy"] or b["session_keeps"])
            ):
                problems.append(f"in use with no session driving it: {b}")
        if held != self.c.in_use:
            problems.append(f"{held} backends held in the lane, {self.c.in_use} counted")
        return problems

    def session(self, wake: Callable[..., None]) -> Any:
        return _lane.Session(wake)

    def park(
        self,
        session: Any,
        *,
        fd: int,
        key: PoolKey,
        sig: int,
        statements: list[SessionStatement],
        release_idle: bool,
        deprecate_eof: bool,
        status: int,
        conn: Any | None,
        conn_sig: int,
        conn_statements: list[BackendStatement],
        last: Any | None,
    ) -> None:
        """Let the lane run ``session``'s commands (its client socket ``fd``) until one needs
        Python, which ``wake`` (given to :meth:`session`) then hears. ``sig`` and
        ``statements`` are the session's state and prepared statements as the lane compares
        them; ``release_idle`` frees its backend after each command outside a transaction
        (transaction mode); ``status`` is its last server status; ``conn`` a backend bound to
        it (from :meth:`enter`, with ``conn_sig`` and ``conn_statements``) or None; ``last``
        the lane's handle on the backend it used last, preferred. OSError: the lane cannot
        watch the sockets (nothing was parked)."""
        self.c.park(
            session,
            fd=fd,
            key=self.key(key),
            sig=sig,
            statements=statements,
            release_idle=release_idle,
            deprecate_eof=deprecate_eof,
            status=status,
            conn=conn,
            conn_sig=conn_sig,
            conn_statements=conn_statements,
            last=last,
        )

    def unpark(self, session: Any) -> None:
        """Hand ``session`` back at once (its task was cancelled while parked)."""
        self.c.unpark(session)

    def plain_query(self, text: bytes) -> None:
        """A COM_QUERY text found plain: the lane runs it from now on (LOAD DATA never: its
        file comes from the client mid-answer)."""
        if b"infile" not in text.lower():
            self.c.plain(text)


def check(choice: str) -> None:
    """``proxy_relay = c`` insists on the compiled parts: the lane too."""
    if choice == "c" and _lane is None:
        raise ConfigError(f"proxy_relay is 'c' but the pooler's fast lane is missing: {_missing}")


def lane_for(choice: str, **kwargs: Any) -> Lane | None:
    """A lane for a new pool, if the extension is built and ``choice`` (``proxy_relay``)
    allows it."""
    if choice == "python" or _lane is None:
        return None
    return Lane(**kwargs)
