"""A pooled client session: commands are read whole, run on a backend borrowed from the
endpoint's pool, and their responses parsed on the way back so the proxy knows when a
command is over, whether a transaction is open, and what the session has become.

Transaction mode returns the backend after every command that leaves no transaction open
and no pin; session mode keeps it. Either way the session's state (database, known SET
variables, LAST_INSERT_ID, prepared statements) is tracked, so a new backend can be given
the same state — which is also how an idle session survives its endpoint being suspended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from selkie.mysql.packets import (
    Err,
    HandshakeResponse41,
    build_err,
    build_ok,
    parse_err,
    parse_ok,
)
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import (
    MAX_PAYLOAD,
    Capability,
    Command,
    ErrorCode,
    ProtocolError,
    Reader,
    ServerStatus,
    int4,
)
from selkie.proxy.pool import Backend, BackendStatement, EndpointPool, PoolKey, PoolTimeout
from selkie.proxy.relay import Counters
from selkie.proxy.sqlscan import DEFAULTABLE, PSEUDO, Effect, classify

log = logging.getLogger(__name__)
FLUSH_BYTES = 1 << 20
TOO_MANY_STATEMENTS = 1461  # ER_MAX_PREPARED_STMT_COUNT_REACHED
CURSOR_FLAGS = 0x0F  # COM_STMT_EXECUTE: read-only, for-update, scrollable cursor types
# The owner of a backend whose session state is not known: the next user resets it.
UNKNOWN_OWNER = object()


@dataclass
class Prepared:
    sql: bytes
    num_params: int
    # What executing it does to the session (a prepared SET's values are parameters, so it
    # pins instead of being tracked).
    effect: Effect
    param_types: bytes | None = None


@dataclass
class Summary:
    status: int = ServerStatus.AUTOCOMMIT
    warnings: int = 0
    last_insert_id: int = 0
    error: Err | None = None
    stmt_id: int | None = None
    num_params: int = 0


class BackendLost(Exception):
    """The compute connection died during a command."""


class CommandRefused(Exception):
    """A backend could not be had (the endpoint cannot wake, …): the client gets this ERR."""

    def __init__(self, code: int, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sqlstate = sqlstate


@dataclass
class SessionState:
    database: str | None
    sets: dict[str, str] = field(default_factory=dict)
    last_insert_id: int | None = None
    multi_statements: bool | None = None
    prepared: dict[int, Prepared] = field(default_factory=dict)
    next_stmt_id: int = 1


class PooledSession:
    def __init__(
        self,
        *,
        client: PacketStream,
        pool: EndpointPool,
        key: PoolKey,
        connect: Callable[[], Awaitable[Backend]],
        database: str | None,
        transaction_mode: bool,
        counters: Counters,
        client_caps: int,
    ) -> None:
        self.client = client
        self.pool = pool
        self.key = key
        self.connect = connect
        self.state = SessionState(database=database)
        self.transaction_mode = transaction_mode
        self.counters = counters
        self.caps = client_caps
        self.backend: Backend | None = None
        self._last: Backend | None = None  # the backend used last: no reset needed there
        self.pins: set[str] = set()
        self.status = int(ServerStatus.AUTOCOMMIT)
        self._pinned_counted = False
        self._overwriting = False  # the command runs over another client's variables
        # Statements with long data sent and not yet executed, and the backend statement
        # holding it (the session's backend is kept meanwhile).
        self._long_data: dict[int, BackendStatement] = {}

    # --- backends --------------------------------------------------------------------------

    @property
    def pinned(self) -> bool:
        return bool(self.pins)

    def _update_pin_metric(self) -> None:
        if self.pinned and not self._pinned_counted:
            self.pool.pinned += 1
            self._pinned_counted = True
        elif not self.pinned and self._pinned_counted:
            self.pool.pinned -= 1
            self._pinned_counted = False

    async def _acquire(self) -> Backend:
        if self.backend is not None:
            if self.backend.alive():
                return self.backend
            # The compute went away under an idle session (a suspend).
            if self.pinned or self.status & ServerStatus.IN_TRANS:
                raise BackendLost("the compute went away while this session was pinned")
            await self.pool.release(self.backend, broken=True)
            self.backend = None
        self.backend = await self.pool.acquire(self.key, self.connect, prefer=self._last)
        self._last = self.backend
        return self.backend

    async def _release(self, *, broken: bool = False) -> None:
        if self.backend is not None:
            backend, self.backend = self.backend, None
            await self.pool.release(backend, broken=broken)

    def _may_release(self) -> bool:
        return self.transaction_mode and not self.pinned and not self.status & ServerStatus.IN_TRANS

    async def _sync(
        self, b: Backend, *, need_last_insert_id: bool, setting: Iterable[str] = ()
    ) -> Err | None:
        """Give the backend this session's state (``setting``: variables the command about
        to run sets itself); an ERR if the compute refused some of it."""
        st = self.state
        foreign = b.owner is not None and b.owner is not self
        if (
            foreign
            and not b.dirty
            and not self._needs_reset(b, setting, restorable=True)
            and await self._restore_defaults(b, setting) is not None
        ):
            b.dirty = True  # refused: reset instead
        if foreign and (b.dirty or self._needs_reset(b, setting)):
            # Another client left state here that this session must not see and that
            # cannot be set back one variable at a time: wipe the connection's session.
            self.pool.resets += 1
            err = (await self._internal(b, bytes([Command.RESET_CONNECTION]))).error
            if err is not None:
                return err
            b.forget_session()
            foreign = False
        # Another client's values are still here, for the command to overwrite.
        self._overwriting = foreign and self._needs_reset(b, ())
        b.owner = self
        err = await self._put_database(b)
        if err is not None:
            return err
        for var, text in st.sets.items():
            if b.sets.get(var) != text:
                err = (await self._internal(b, b"\x03SET " + text.encode())).error
                if err is not None:
                    return err
                b.sets[var] = text
        if st.multi_statements is not None and b.multi_statements != st.multi_statements:
            option = 0 if st.multi_statements else 1
            await self._internal(b, bytes([Command.SET_OPTION]) + struct.pack("<H", option))
            b.multi_statements = st.multi_statements
        if need_last_insert_id and (b.last_insert_id or 0) != (st.last_insert_id or 0):
            # 0 is what a session that inserted nothing reads.
            await self._internal(b, b"\x03DO LAST_INSERT_ID(%d)" % (st.last_insert_id or 0))
            b.last_insert_id = st.last_insert_id
        return None

    async def _put_database(self, b: Backend) -> Err | None:
        """The session's database on the backend, if it has one there is not."""
        database = self.state.database
        if database and database != b.database:
            err = (await self._internal(b, bytes([Command.INIT_DB]) + database.encode())).error
            if err is not None:
                return err
            b.database = database
        return None

    async def _restore_defaults(self, b: Backend, setting: Iterable[str]) -> Err | None:
        """Variables another client set here that this session never set and that a new
        connection takes from the server's globals: one ``SET SESSION … = DEFAULT``
        puts them back, which is cheaper than a reset and keeps the backend's statements
        (those prepared under the other values are keyed by them and stay apart)."""
        lacking = [
            var
            for var in b.sets
            if var not in self.state.sets and var not in setting and var in DEFAULTABLE
        ]
        if not lacking:
            return None
        text = ", ".join(f"{var} = DEFAULT" for var in lacking)
        err = (await self._internal(b, b"\x03SET SESSION " + text.encode())).error
        if err is None:
            for var in lacking:
                del b.sets[var]
        return err

    def _needs_reset(self, b: Backend, setting: Iterable[str], *, restorable: bool = False) -> bool:
        """Whether the backend's tracked state has something this session lacks: a variable
        it never set (and is not setting now), a database when it has none, a
        multi-statement option it never chose (``restorable``: not counting variables
        ``_restore_defaults`` can put back). What differs in value is set again instead.
        State that is not tracked pins its session, and a pinned session's backend is
        closed, never lent out."""
        st = self.state
        return (
            any(
                var not in st.sets
                and var not in setting
                and not (restorable and var in DEFAULTABLE)
                for var in b.sets
            )
            or (st.database is None and b.database is not None)
            or (st.multi_statements is None and b.multi_statements is not None)
        )

    async def _internal(self, b: Backend, payload: bytes) -> Summary:
        """A command of the proxy's own; its response is read and dropped."""
        b.stream.write(0, payload)
        await b.writer.drain()
        return await self._relay(b, out=None, command=payload[0])

    # --- responses -------------------------------------------------------------------------

    async def _relay(
        self, b: Backend, *, out: Callable[[bytes], None] | None, command: int
    ) -> Summary:
        """Read one command's whole response from the backend (passing the bytes to ``out``,
        None to drop them) and say how it ended.

        The response is forwarded in the chunks it arrives in; only packet boundaries, the
        first bytes of each packet and the small terminators are looked at, which is what
        finding the end of a response and its status needs.
        """
        deprecate_eof = bool(self.caps & Capability.DEPRECATE_EOF)
        summary = Summary(status=self.status)
        if command in (Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA):
            return summary
        writer = self.client.writer
        pending = bytearray()
        pos = 0
        state = "first"
        remaining = 0  # packets left in the current counted section
        sections: list[int] = []  # prepare: counts still to read after the current one
        continued = False  # the next frame continues a 16 MiB packet
        done = False

        def flush(upto: int) -> None:
            if out is not None and upto:
                out(bytes(pending[:upto]))

        while True:
            while not done and pos + 4 <= len(pending):
                length = int.from_bytes(pending[pos : pos + 3], "little")
                end = pos + 4 + length
                if end > len(pending):
                    break
                was_continued, continued = continued, length == MAX_PAYLOAD
                if was_continued:
                    pos = end
                    continue
                head = pending[pos + 4] if length else -1
                small = bytes(pending[pos + 4 : end]) if length < 256 else b""
                pos = end
                if state == "first":
                    if head == 0xFF:
                        summary.error = parse_err(small or bytes(pending[end - length : end]))
                        done = True
                    elif command == Command.STATISTICS:
                        done = True
                    elif command == Command.STMT_PREPARE and head == 0x00:
                        r = Reader(small)
                        r.int1()
                        summary.stmt_id = r.int4()
                        num_columns, num_params = r.int2(), r.int2()
                        summary.num_params = num_params
                        extra = 0 if deprecate_eof else 1
                        sections = [n + extra for n in (num_params, num_columns) if n]
                        if sections:
                            remaining = sections.pop(0)
                            state = "prepare"
                        else:
                            done = True
                    elif head == 0x00 or (
                        head == 0xFE and length < 9 and command != Command.FIELD_LIST
                    ):
                        ok = parse_ok(small or bytes(pending[end - length : end]))
                        summary.status, summary.warnings = ok.status, ok.warnings
                        if ok.last_insert_id:
                            summary.last_insert_id = ok.last_insert_id
                        done = not ok.status & ServerStatus.MORE_RESULTS_EXISTS
                    elif head == 0xFB and command == Command.QUERY:
                        flush(pos)
                        del pending[:pos]
                        pos = 0
                        if out is not None:
                            await writer.drain()
                        await self._local_infile(b)
                    elif command == Command.FIELD_LIST:
                        state = "until_eof"
                    else:
                        remaining = Reader(small or bytes(pending[end - length : end])).lenenc_int()
                        state = "defs" if remaining else "rows"
                        if not remaining and not deprecate_eof:
                            state = "eof"
                elif state == "defs":
                    remaining -= 1
                    if remaining == 0:
                        state = "rows" if deprecate_eof else "eof"
                elif state == "eof":
                    state = "rows"
                elif state == "prepare":
                    remaining -= 1
                    if remaining == 0:
                        if sections:
                            remaining = sections.pop(0)
                        else:
                            done = True
                elif state in ("rows", "until_eof"):
                    if head == 0xFF:
                        summary.error = parse_err(small or bytes(pending[end - length : end]))
                        done = True
                    elif (
                        head == 0xFE and length < 9
                        if state == "until_eof" or not deprecate_eof
                        else head == 0xFE and length < MAX_PAYLOAD
                    ):
                        if deprecate_eof and state == "rows":
                            ok = parse_ok(small)
                            summary.status, summary.warnings = ok.status, ok.warnings
                        elif len(small) >= 5:
                            summary.warnings, summary.status = struct.unpack("<HH", small[1:5])
                        if state == "rows" and summary.status & ServerStatus.MORE_RESULTS_EXISTS:
                            state = "first"
                        else:
                            done = True
            if done:
                flush(pos)
                return summary
            flush(pos)
            del pending[:pos]
            pos = 0
            if out is not None and writer.transport.get_write_buffer_size() > FLUSH_BYTES:
                await writer.drain()
            try:
                data = await b.reader.read(1 << 18)
            except (ConnectionError, OSError) as exc:
                raise BackendLost(str(exc)) from exc
            if not data:
                raise BackendLost("the compute closed the connection")
            pending += data

    async def _local_infile(self, b: Backend) -> None:
        """LOAD DATA LOCAL: the client's file packets go to the same backend."""
        while True:
            seq, pkt = await self.client.read()
            b.stream.write(seq, pkt)
            await b.writer.drain()
            if not pkt:
                return

    # --- the command loop ------------------------------------------------------------------

    async def reply(self, seq: int, payload: bytes) -> None:
        await self.client.send(seq, payload)

    async def error(self, code: ErrorCode, message: str) -> None:
        await self.reply(1, build_err(code, message))

    async def login(self) -> Err | None:
        """Borrow a backend once so a bad database or a dead compute shows at connect. Only
        the database is put in place: whether another client's state must be wiped is
        decided by the first command (which often sets that state itself, as drivers'
        ``SET NAMES`` on connect do)."""
        b = await self._acquire()
        if b.owner is None or b.owner is self:
            err = await self._sync(b, need_last_insert_id=False)
        else:
            err = await self._put_database(b)
        if err is not None or self._may_release():
            await self._release()
        return err

    async def run(self) -> None:
        try:
            while True:
                try:
                    seq, payload = await self.client.read()
                except (ConnectionError, asyncio.IncompleteReadError):
                    return
                if seq != 0 or not payload:
                    raise ProtocolError("a command must start with sequence id 0")
                self.counters.client_sent(len(payload) + 4, 1)
                command = payload[0]
                if command == Command.QUIT:
                    return
                try:
                    await self._command(command, payload)
                except CommandRefused as exc:
                    await self.reply(1, build_err(exc.code, exc.message, exc.sqlstate))
                except PoolTimeout:
                    await self.error(
                        ErrorCode.TOO_MANY_CONNECTIONS,
                        f"all {self.pool.cap} backend connections of endpoint "
                        f"{self.pool.endpoint_id} are busy; waited {self.pool.wait_timeout:.0f}s",
                    )
                except BackendLost as exc:
                    await self._release(broken=True)
                    lost_state = self.pinned or bool(self.status & ServerStatus.IN_TRANS)
                    await self.error(
                        ErrorCode.CONNECTION_KILLED,
                        f"lost the connection to endpoint {self.pool.endpoint_id}'s compute "
                        f"({exc}); reconnect",
                    )
                    if lost_state:
                        return
                self._update_pin_metric()
        finally:
            # A client gone in the middle of a transaction or with a pinned session leaves
            # state nobody can use: close that backend (the server rolls back) rather than
            # lend it out.
            dirty = self.pinned or bool(self.status & ServerStatus.IN_TRANS)
            await self._release(broken=dirty)
            if self._pinned_counted:
                self.pool.pinned -= 1

    async def _command(self, command: int, payload: bytes) -> None:
        st = self.state
        if command == Command.PING:
            await self.reply(1, build_ok(status=self.status))
            return
        if command == Command.RESET_CONNECTION:
            st.sets.clear()
            st.prepared.clear()
            st.last_insert_id = None
            self.pins.clear()
            self._long_data.clear()
            if self.backend is not None:
                await self._run(command, payload)
                self.backend.forget_session()
                self.status = int(ServerStatus.AUTOCOMMIT)
                await self._release()
            else:
                await self.reply(1, build_ok())
            return
        if command == Command.CHANGE_USER:
            await self.error(
                ErrorCode.UNKNOWN_COM_ERROR,
                "COM_CHANGE_USER is not supported on pooled connections; connect as the other "
                "role instead",
            )
            return
        if command == Command.SET_OPTION and len(payload) >= 3:
            st.multi_statements = struct.unpack("<H", payload[1:3])[0] == 0
        if command == Command.STMT_CLOSE:
            # Only the client's id goes: the backend keeps the statement for its next user
            # (its cache is bounded) unless long data sent for it is pending there.
            stmt = struct.unpack("<I", payload[1:5])[0]
            st.prepared.pop(stmt, None)
            pending = self._long_data.get(stmt)
            if pending is not None:
                if self.backend is not None:
                    self.backend.drop_statement(pending)  # its long data goes with it
                    with contextlib.suppress(ConnectionError, OSError):
                        await self.backend.writer.drain()
                self._long_data_done(stmt)
                if self._may_release():
                    await self._release()
            return
        stmt = None
        if command in (
            Command.STMT_EXECUTE,
            Command.STMT_SEND_LONG_DATA,
            Command.STMT_RESET,
            Command.STMT_FETCH,
        ):
            stmt = struct.unpack("<I", payload[1:5])[0]
            if stmt not in st.prepared:
                await self.error(ErrorCode.UNKNOWN_COM_ERROR, f"Unknown prepared statement {stmt}")
                return
            if command == Command.STMT_FETCH or (
                command == Command.STMT_EXECUTE and len(payload) > 5 and payload[5] & CURSOR_FLAGS
            ):
                await self.error(
                    ErrorCode.NOT_SUPPORTED_YET,
                    "server-side cursors are not supported on pooled connections; connect "
                    "without the -pooler suffix to use them",
                )
                return
        if command == Command.QUERY:
            effect: Effect | None = classify(payload[1:].decode(errors="replace"))
        elif command == Command.STMT_EXECUTE and stmt is not None:
            effect = st.prepared[stmt].effect
        else:
            effect = None
        summary = await self._run(command, payload, effect=effect)
        if summary is None:
            return
        self.status = summary.status
        b = self.backend
        if effect is not None:
            # Pins and untracked changes count even when the command failed part-way.
            if effect.pin:
                self.pins.add(effect.reason)
            if effect.untracked and b is not None:
                b.dirty = True
            if summary.error is None:
                sets = dict(effect.sets)
                if b is not None and (relative := set(sets) - effect.overwrites - PSEUDO):
                    # SET x = f(@@x): replaying that text elsewhere would build on another
                    # session's value. What it gave here is what is kept and replayed.
                    values = await self._current_values(b, relative)
                    if values is None:
                        b.dirty = True  # not known: nobody else gets this backend as it is
                    else:
                        sets.update(values)
                _record_sets(st.sets, sets)
                if b is not None:
                    _record_sets(b.sets, sets)
                if effect.database:
                    st.database = effect.database
                    if b is not None:
                        b.database = effect.database
                if effect.unpin_lock_tables:
                    self.pins.discard("LOCK TABLES")
            elif (effect.sets or effect.database) and b is not None:
                # Some of its SETs may have run: not for another client to inherit.
                b.dirty = True
        if command == Command.INIT_DB and summary.error is None:
            st.database = payload[1:].decode(errors="replace")
            if self.backend is not None:
                self.backend.database = st.database
        if summary.last_insert_id:
            st.last_insert_id = summary.last_insert_id
            if self.backend is not None:
                self.backend.last_insert_id = summary.last_insert_id
        if summary.error is not None and self._overwriting and self.backend is not None:
            # What was to replace another client's values failed: they are still there, so
            # whoever uses this backend next gets it reset.
            self.backend.dirty = True
            self.backend.owner = UNKNOWN_OWNER
        if summary.warnings:
            self.pins.add("warnings")  # until read: the next command runs here too
        elif command == Command.QUERY:
            self.pins.discard("warnings")
        if command == Command.STMT_SEND_LONG_DATA and stmt is not None and b is not None:
            bs = b.statement(st.prepared[stmt].sql)
            if bs is not None:
                self._long_data[stmt] = bs
            self.pins.add("long data")
        elif command in (Command.STMT_EXECUTE, Command.STMT_RESET) and stmt is not None:
            self._long_data_done(stmt)
        if self._may_release():
            await self._release()

    def _long_data_done(self, stmt: int) -> None:
        """Long data for ``stmt`` was used or dropped; the pin goes with the last of it."""
        self._long_data.pop(stmt, None)
        if not self._long_data:
            self.pins.discard("long data")

    async def _current_values(self, b: Backend, names: Iterable[str]) -> dict[str, str] | None:
        """``var = 'value'`` assignments of the session values of ``names`` on ``b`` (None
        if they cannot be read: the client has its answer already, so nothing is said)."""
        names = sorted(names)
        query = "SELECT " + ", ".join(f"@@SESSION.{n}" for n in names)
        chunks: list[bytes] = []
        try:
            b.stream.write(0, b"\x03" + query.encode())
            await b.writer.drain()
            summary = await self._relay(b, out=chunks.append, command=Command.QUERY)
            values = _first_row(b"".join(chunks), len(names), self.caps)
        except (BackendLost, ConnectionError, OSError, ProtocolError):
            return None
        if summary.error is not None or values is None:
            return None
        return {
            n: f"{n} = " + ("NULL" if v is None else "'" + _escape(v) + "'")
            for n, v in zip(names, values, strict=True)
        }

    def _to_client(self, chunk: bytes) -> None:
        """Bytes of a response for the client: counted (metered transfer) and sent."""
        self.counters.bytes_to_client += len(chunk)
        self.client.writer.write(chunk)

    async def _run(
        self, command: int, payload: bytes, *, effect: Effect | None = None
    ) -> Summary | None:
        """Run one client command on a backend with this session's state in place."""
        reads_lii = effect is not None and effect.reads_last_insert_id
        setting = effect.overwrites if effect is not None else ()
        b = await self._acquire()
        err = await self._sync(b, need_last_insert_id=reads_lii, setting=setting)
        if err is not None:
            await self.reply(1, build_err(err.code, err.message, err.sqlstate))
            return Summary(error=err, status=self.status)
        if command == Command.STMT_PREPARE:
            return await self._prepare(b, payload)
        if command in (
            Command.STMT_EXECUTE,
            Command.STMT_SEND_LONG_DATA,
            Command.STMT_RESET,
            Command.STMT_FETCH,
        ):
            payload = await self._bind_statement(b, command, payload)
            if payload == b"":
                return Summary(status=self.status)
        b.stream.write(0, payload)
        await b.writer.drain()
        summary = await self._relay(b, out=self._to_client, command=command)
        await self.client.writer.drain()
        return summary

    async def _prepare(self, b: Backend, payload: bytes) -> Summary:
        """COM_STMT_PREPARE: the client sees the proxy's own statement id, valid on any
        backend; the statement is prepared again wherever it runs next."""
        st = self.state
        # Hold the response back, then send it with our statement id in place of the compute's.
        summary, buffered = await self._prepare_here(b, payload[1:])
        if summary.error is None and summary.stmt_id is not None:
            ours = st.next_stmt_id
            st.next_stmt_id += 1
            st.prepared[ours] = Prepared(
                sql=payload[1:], num_params=summary.num_params, effect=_prepared_effect(payload[1:])
            )
            b.remember(payload[1:], summary.stmt_id)
            first = bytearray(buffered[0])
            first[5:9] = int4(ours)  # frame header (4) + OK byte (1) + statement id (4)
            buffered[0] = bytes(first)
        for data in buffered:
            self._to_client(data)
        await self.client.writer.drain()
        return summary

    async def _prepare_here(self, b: Backend, sql: bytes) -> tuple[Summary, list[bytes]]:
        """COM_STMT_PREPARE of ``sql`` on ``b``: how it ended, and the response's bytes. When
        the server has no room for another statement, the backend gives back the least
        recently used half of its own and it is tried once more."""

        async def prepare() -> tuple[Summary, list[bytes]]:
            b.stream.write(0, bytes([Command.STMT_PREPARE]) + sql)
            await b.writer.drain()
            buffered: list[bytes] = []
            summary = await self._relay(b, out=buffered.append, command=Command.STMT_PREPARE)
            return summary, buffered

        summary, buffered = await prepare()
        if summary.error and summary.error.code == TOO_MANY_STATEMENTS and b.statements:
            b.shrink_statements()
            summary, buffered = await prepare()
        return summary, buffered

    async def _bind_statement(self, b: Backend, command: int, payload: bytes) -> bytes:
        """Map the client's statement id to the backend's statement for the same SQL,
        preparing it here first if this backend has not got it; an execute that relies on
        parameter types bound earlier gets them again where the backend's differ (another
        client, or another backend, bound those)."""
        stmt = struct.unpack("<I", payload[1:5])[0]
        info = self.state.prepared[stmt]
        # Long data went to a particular statement: that one runs, whatever the state now.
        bs = self._long_data.get(stmt) or b.statement(info.sql)
        if bs is None:
            summary, _ = await self._prepare_here(b, info.sql)
            if summary.error is not None or summary.stmt_id is None:
                err = summary.error or Err(code=1243, sqlstate="HY000", message="re-prepare failed")
                await self.reply(1, build_err(err.code, err.message, err.sqlstate))
                return b""
            bs = b.remember(info.sql, summary.stmt_id)
        out = bytearray(payload)
        out[1:5] = int4(bs.id)
        if command == Command.STMT_EXECUTE and info.num_params:
            flag_at = 10 + (info.num_params + 7) // 8
            if flag_at < len(out):
                if out[flag_at] == 1:
                    info.param_types = bytes(out[flag_at + 1 : flag_at + 1 + 2 * info.num_params])
                    bs.types = info.param_types
                elif info.param_types is not None and bs.types != info.param_types:
                    out[flag_at] = 1
                    out[flag_at + 1 : flag_at + 1] = info.param_types
                    bs.types = info.param_types
        return bytes(out)


# What SET NAMES sets, so an earlier SET of one of these is replaced by it, not replayed after.
_NAMES_COVERS = (
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
)


def _record_sets(tracked: dict[str, str], sets: dict[str, str]) -> None:
    """Note ``sets`` in the order they ran: replay goes in insertion order, so a variable
    set again moves to the end, and SET NAMES supersedes the variables it sets."""
    for var, text in sets.items():
        tracked.pop(var, None)
        if var == "names":
            for covered in _NAMES_COVERS:
                tracked.pop(covered, None)
        tracked[var] = text


def _escape(value: bytes) -> str:
    text = value.decode(errors="replace")
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _first_row(data: bytes, columns: int, caps: int) -> list[bytes | None] | None:
    """The values of the first row of a text-protocol result set (the raw bytes of the
    whole response), None if it is not one."""
    packets = []
    pos = 0
    while pos + 4 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        packets.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    skip = 1 + columns + (0 if caps & Capability.DEPRECATE_EOF else 1)
    if len(packets) <= skip or not packets[0] or packets[0][0] in (0x00, 0xFF):
        return None
    r = Reader(packets[skip])
    out: list[bytes | None] = []
    for _ in range(columns):
        if r.data[r.pos : r.pos + 1] == b"\xfb":
            r.int1()
            out.append(None)
        else:
            out.append(r.lenenc_str())
    return out


def _prepared_effect(sql: bytes) -> Effect:
    """What executing a prepared statement does: as the same text would, except that a SET
    or USE cannot be tracked (its values are parameters), so it pins."""
    effect = classify(sql.decode(errors="replace"))
    if effect.sets or effect.database:
        return dataclasses.replace(
            effect,
            pin=True,
            reason="prepared SET",
            sets={},
            database=None,
            overwrites=frozenset(),
        )
    return effect


def backend_response(response: HandshakeResponse41) -> HandshakeResponse41:
    """The login a pooled backend makes: the client's, without its database (the session
    state decides that per command)."""
    return dataclasses.replace(response, database=None)
