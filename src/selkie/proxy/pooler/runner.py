"""Running a pooled session's commands on backends borrowed from its endpoint's pool.

A command runs on a backend that has been given the session's state first (database, SET
variables, LAST_INSERT_ID, prepared statements); its response is read by a
:class:`ResponseReader` on the way to the client, so the pooler knows when the command is
over and what it left (a transaction open, a new statement id).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Iterable

from selkie.mysql.packets import Err, build_err
from selkie.mysql.response import Event, ResponseReader, Summary
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Capability, Command, ErrorCode, ProtocolError, ServerStatus, int4
from selkie.proxy.pooler.backends import Backend, BackendStatement, PoolKey
from selkie.proxy.pooler.pool import EndpointPool
from selkie.proxy.pooler.sqlscan import DEFAULTABLE, Effect
from selkie.proxy.pooler.state import Prepared, SessionState, escape, first_row, prepared_effect
from selkie.proxy.relay import Counters

log = logging.getLogger(__name__)
# Plain ints: a test on the Flag enums costs a microsecond on every pooled statement.
IN_TRANS = int(ServerStatus.IN_TRANS)
DEPRECATE_EOF = int(Capability.DEPRECATE_EOF)
FLUSH_BYTES = 1 << 20
TOO_MANY_STATEMENTS = 1461  # ER_MAX_PREPARED_STMT_COUNT_REACHED
# Commands that name a prepared statement by the id the client was given.
STATEMENT_COMMANDS = frozenset(
    {Command.STMT_EXECUTE, Command.STMT_SEND_LONG_DATA, Command.STMT_RESET, Command.STMT_FETCH}
)


class BackendLost(Exception):
    """The compute connection died during a command."""


class CommandRefused(Exception):
    """A backend could not be had (the endpoint cannot wake, …): the client gets this ERR."""

    def __init__(self, code: int, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sqlstate = sqlstate


class CommandRunner:
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
        self.last: Backend | None = None  # the backend used last: no reset needed there
        self.pins: set[str] = set()
        self.status = int(ServerStatus.AUTOCOMMIT)
        self.pinned_counted = False
        self.overwriting = False  # the command runs over another client's variables
        # Statements with long data sent and not yet executed, and the backend statement
        # holding it (the session's backend is kept meanwhile).
        self.long_data: dict[int, BackendStatement] = {}

    # --- backends --------------------------------------------------------------------------

    @property
    def pinned(self) -> bool:
        return bool(self.pins)

    def update_pin_metric(self) -> None:
        if self.pinned and not self.pinned_counted:
            self.pool.pin_changed(True)
            self.pinned_counted = True
        elif not self.pinned and self.pinned_counted:
            self.pool.pin_changed(False)
            self.pinned_counted = False

    async def acquire(self) -> Backend:
        if self.backend is not None:
            if self.backend.reusable():
                return self.backend
            # The compute went away under an idle session (a suspend), or the last answer
            # was not read to its end: the connection is not for another command.
            if self.pinned or self.status & IN_TRANS:
                raise BackendLost("the compute went away while this session was pinned")
            await self.pool.release(self.backend, broken=True)
            self.backend = None
        self.backend = await self.pool.acquire(self.key, self.connect, prefer=self.last)
        self.last = self.backend
        return self.backend

    async def release(self, *, broken: bool = False) -> None:
        if self.backend is not None:
            backend, self.backend = self.backend, None
            await self.pool.release(backend, broken=broken)

    def may_release(self) -> bool:
        return self.transaction_mode and not self.pinned and not self.status & IN_TRANS

    async def sync(
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
            self.pool.was_reset()
            err = (await self._internal(b, bytes([Command.RESET_CONNECTION]))).error
            if err is not None:
                return err
            b.forget_session()
            foreign = False
        # Another client's values are still here, for the command to overwrite.
        self.overwriting = foreign and self._needs_reset(b, ())
        b.owner = self
        err = await self.put_database(b)
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

    async def put_database(self, b: Backend) -> Err | None:
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
        await self._send(b, payload)
        return await self._relay(b, out=None, command=payload[0])

    @staticmethod
    async def _send(b: Backend, payload: bytes) -> None:
        """Send a command to the backend: it is answering until ``_relay`` has read the
        whole response (the pool closes it rather than lend it out before)."""
        b.answering = True
        b.stream.write(0, payload)
        try:
            await b.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise BackendLost(str(exc)) from exc

    # --- responses -------------------------------------------------------------------------

    async def _relay(
        self, b: Backend, *, out: Callable[[bytes], None] | None, command: int
    ) -> Summary:
        """Read one command's whole response from the backend (passing the bytes to ``out``,
        None to drop them) and say how it ended. The bytes are passed on as they arrive,
        whole packets at a time; a client slower than the compute holds the reading back."""
        reader = ResponseReader(
            command, deprecate_eof=bool(self.caps & DEPRECATE_EOF), status=self.status
        )
        writer = self.client.writer
        data = b""
        while True:
            chunk, event = reader.feed(data)
            if out is not None and chunk:
                out(chunk)
            if event is Event.DONE:
                b.answering = False
                return reader.summary
            if event is Event.LOCAL_INFILE:
                if out is not None:
                    await writer.drain()
                await self._local_infile(b)
                data = b""
                continue
            if out is not None and writer.transport.get_write_buffer_size() > FLUSH_BYTES:
                await writer.drain()
            try:
                data = await b.reader.read(1 << 18)
            except (ConnectionError, OSError) as exc:
                raise BackendLost(str(exc)) from exc
            if not data:
                raise BackendLost("the compute closed the connection")

    async def _local_infile(self, b: Backend) -> None:
        """LOAD DATA LOCAL: the client's file packets go to the same backend."""
        while True:
            seq, pkt = await self.client.read()
            b.stream.write(seq, pkt)
            try:
                await b.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise BackendLost(str(exc)) from exc
            if not pkt:
                return

    async def reply(self, seq: int, payload: bytes) -> None:
        await self.client.send(seq, payload)

    async def error(self, code: ErrorCode, message: str) -> None:
        await self.reply(1, build_err(code, message))

    def _to_client(self, chunk: bytes) -> None:
        """Bytes of a response for the client: counted (metered transfer) and sent."""
        writer = self.client.writer
        if writer.transport.is_closing():
            # The client left: stop here rather than read the rest of the answer into the
            # void (the backend, answering still, is closed on release).
            raise ConnectionResetError("the client closed the connection")
        self.counters.bytes_to_client += len(chunk)
        writer.write(chunk)

    async def current_values(self, b: Backend, names: Iterable[str]) -> dict[str, str] | None:
        """``var = 'value'`` assignments of the session values of ``names`` on ``b`` (None
        if they cannot be read: the client has its answer already, so nothing is said)."""
        names = sorted(names)
        query = "SELECT " + ", ".join(f"@@SESSION.{n}" for n in names)
        chunks: list[bytes] = []
        try:
            await self._send(b, b"\x03" + query.encode())
            summary = await self._relay(b, out=chunks.append, command=Command.QUERY)
            values = first_row(b"".join(chunks), len(names), self.caps)
        except (BackendLost, ConnectionError, OSError, ProtocolError):
            return None
        if summary.error is not None or values is None:
            return None
        return {
            n: f"{n} = " + ("NULL" if v is None else "'" + escape(v) + "'")
            for n, v in zip(names, values, strict=True)
        }

    # --- commands --------------------------------------------------------------------------

    async def run_command(
        self, command: int, payload: bytes, *, effect: Effect | None = None
    ) -> Summary:
        """Run one client command on a backend with this session's state in place."""
        reads_lii = effect is not None and effect.reads_last_insert_id
        setting = effect.overwrites if effect is not None else ()
        b = await self.acquire()
        err = await self.sync(b, need_last_insert_id=reads_lii, setting=setting)
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
        await self._send(b, payload)
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
                sql=payload[1:], num_params=summary.num_params, effect=prepared_effect(payload[1:])
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
            await self._send(b, bytes([Command.STMT_PREPARE]) + sql)
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
        bs = self.long_data.get(stmt) or b.statement(info.sql)
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
