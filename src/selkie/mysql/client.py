"""The client's side of the conversation with a MariaDB server: log in, send a query, read
its answer. Every place Selkie talks to a compute as a client uses this one copy: the proxy
logging in for a client, the safekeeper following a binlog, SQL over HTTP.

Sans-I/O first. Answering the server's greeting and its auth switch, decoding a column
definition and a text row are pure functions, and :class:`ResultParser` takes an answer's
packets one at a time; :func:`login` and :func:`query` only drive them over a
:class:`PacketStream`. (The pooler, which passes answers on without decoding them, reads
where they end with :class:`selkie.mysql.response.ResponseReader`.)
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from selkie.mysql import auth
from selkie.mysql.packets import (
    NATIVE_PLUGIN,
    HandshakeV10,
    build_handshake_response,
    is_err,
    is_ok,
    parse_auth_switch_request,
    parse_err,
    parse_handshake_v10,
    parse_ok,
)
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import (
    MAX_PAYLOAD,
    Command,
    PacketTooLarge,
    ProtocolError,
    Reader,
    ServerStatus,
)

UNIX_SOCKET_PLUGIN = "unix_socket"
# Room for the packet that ends a result (an ERR's message, an OK's info) past a budget.
END_PACKET_ROOM = 1 << 10


# --- login ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedIn:
    """How a login ended: the server's OK or ERR payload, and what the session runs with."""

    reply: bytes
    greeting: HandshakeV10 | None  # None: refused before the handshake (1040, say)
    scramble: bytes = b""
    capabilities: int = 0

    @property
    def thread_id(self) -> int:
        return self.greeting.connection_id if self.greeting is not None else 0


def auth_switch_answer(reply: bytes, stage1: bytes | None) -> tuple[bytes, bytes]:
    """The answer to an AuthSwitchRequest, and the scramble it was made with. ``stage1`` is
    ``SHA1(password)`` for ``mysql_native_password``; None logs in by ``unix_socket``,
    whose proof is the socket's peer credentials (an empty answer)."""
    plugin, data = parse_auth_switch_request(reply)
    if stage1 is not None and plugin == NATIVE_PLUGIN:
        scramble = data[:20]
        return auth.native_token(stage1, scramble), scramble
    if stage1 is None and plugin == UNIX_SOCKET_PLUGIN:
        return b"", data
    wanted = NATIVE_PLUGIN if stage1 is not None else UNIX_SOCKET_PLUGIN
    raise ProtocolError(f"the server asks for auth plugin {plugin}, not {wanted}")


async def login(
    stream: PacketStream,
    *,
    user: str,
    stage1: bytes | None,
    capabilities: int,
    database: str | None = None,
    charset: int | None = None,
    attributes: dict[str, str] | None = None,
    max_packet_size: int = 2**24,
) -> LoggedIn:
    """Answer the server's greeting as ``user``: ``mysql_native_password`` from ``stage1``
    (``SHA1(password)``, all a native login needs), or ``unix_socket`` when it is None.
    ``capabilities`` are what the client wants, of which the server's are kept; ``charset``
    defaults to the server's. The server's OK or ERR comes back as it is: the caller decides
    whether a refusal is an exception or an answer to pass on."""
    _, payload = await stream.read()
    if is_err(payload):
        return LoggedIn(payload, None)
    greeting = parse_handshake_v10(payload)
    caps = capabilities & greeting.capabilities
    scramble = greeting.scramble
    token = auth.native_token(stage1, scramble) if stage1 is not None else b""
    seq = await stream.send(
        1,
        build_handshake_response(
            capabilities=caps,
            max_packet_size=max_packet_size,
            charset=greeting.charset if charset is None else charset,
            user=user,
            auth_response=token,
            database=database,
            auth_plugin=NATIVE_PLUGIN if stage1 is not None else UNIX_SOCKET_PLUGIN,
            attributes=attributes,
        ),
    )
    while True:
        seq, reply = await stream.read()
        if is_ok(reply) or is_err(reply):
            return LoggedIn(reply, greeting, scramble, caps)
        if reply[:1] != b"\xfe":
            raise ProtocolError("unexpected packet from the server during login")
        answer, scramble = auth_switch_answer(reply, stage1)
        seq = await stream.send(seq + 1, answer)


# --- text result sets ------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A ColumnDefinition41."""

    name: str
    table: str
    org_table: str
    database: str
    org_name: str
    charset: int
    length: int
    type: int
    flags: int
    decimals: int


def column_definition(payload: bytes) -> Column:
    r = Reader(payload)
    r.lenenc_str()  # catalog, always "def"
    database = r.lenenc_str().decode(errors="replace")
    table = r.lenenc_str().decode(errors="replace")
    org_table = r.lenenc_str().decode(errors="replace")
    name = r.lenenc_str().decode(errors="replace")
    org_name = r.lenenc_str().decode(errors="replace")
    r.lenenc_int()  # length of the fixed fields (0x0c)
    charset = r.int2()
    length = r.int4()
    type_ = r.int1()
    flags = r.int2()
    decimals = r.int1()
    return Column(
        name, table, org_table, database, org_name, charset, length, type_, flags, decimals
    )


def text_row(payload: bytes, count: int) -> list[bytes | None]:
    """A text-protocol row: ``count`` length-encoded strings, NULL as 0xFB."""
    r = Reader(payload)
    values: list[bytes | None] = []
    for _ in range(count):
        if r.data[r.pos] == 0xFB:
            r.pos += 1
            values.append(None)
        else:
            values.append(r.lenenc_str())
    return values


def packets(data: bytes) -> list[bytes]:
    """The payloads of the whole packets in ``data`` (a 16 MiB packet's parts joined)."""
    out: list[bytes] = []
    parts: list[bytes] = []
    pos = 0
    while pos + 4 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        if pos + 4 + length > len(data):
            break
        parts.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
        if length < MAX_PAYLOAD:
            out.append(b"".join(parts))
            parts = []
    return out


@dataclass
class Outcome:
    """A query's answer: its first result (further results of a multi-statement query are
    read and dropped), or the error that ended it."""

    columns: list[Column] = field(default_factory=list)
    rows: list[list[bytes | None]] = field(default_factory=list)
    affected: int = 0
    insert_id: int = 0
    status: int = 0
    # (code, sqlstate, message) of an ERR
    error: tuple[int, str, str] | None = None

    @property
    def in_transaction(self) -> bool:
        return bool(self.status & ServerStatus.IN_TRANS)


class _Phase(enum.Enum):
    FIRST = enum.auto()  # a result's first packet: OK, ERR or the column count
    COLUMNS = enum.auto()  # column definitions
    COLUMNS_EOF = enum.auto()  # the EOF after them (without CLIENT_DEPRECATE_EOF)
    ROWS = enum.auto()  # rows until EOF (an OK with its header) or ERR
    DONE = enum.auto()


class ResultParser:
    """A COM_QUERY's text-protocol answer, fed one packet payload at a time.

    ``deprecate_eof``: the session has CLIENT_DEPRECATE_EOF (no EOF after the column
    definitions; rows end with an OK whose header is 0xFE). Only the first result is kept;
    an error in a later one ends the answer, as the server stops there."""

    def __init__(self, *, deprecate_eof: bool) -> None:
        self.deprecate_eof = deprecate_eof
        self.outcome = Outcome()
        self.row_bytes = 0  # the size of the rows kept so far
        self._phase = _Phase.FIRST
        self._first = True  # still in the first result
        self._count = 0
        self._left = 0

    @property
    def done(self) -> bool:
        return self._phase is _Phase.DONE

    @property
    def reading_rows(self) -> bool:
        return self._phase is _Phase.ROWS

    def feed(self, payload: bytes) -> bool:
        """Take the next packet's payload; True when the answer is over."""
        phase, out = self._phase, self.outcome
        if phase is _Phase.ROWS:
            if is_err(payload):
                self._error(payload)
            elif payload[:1] == b"\xfe" and len(payload) < MAX_PAYLOAD:
                if self.deprecate_eof:
                    status = parse_ok(payload).status  # an OK with the EOF header
                else:
                    status = int.from_bytes(payload[3:5], "little")  # EOF: warnings, status
                self._end_of_result(status)
            elif self._first:
                self.row_bytes += len(payload)
                out.rows.append(text_row(payload, self._count))
        elif phase is _Phase.FIRST:
            self._result_start(payload)
        elif phase is _Phase.COLUMNS:
            if self._first:
                out.columns.append(column_definition(payload))
            self._left -= 1
            if not self._left:
                self._phase = _Phase.ROWS if self.deprecate_eof else _Phase.COLUMNS_EOF
        elif phase is _Phase.COLUMNS_EOF:
            self._phase = _Phase.ROWS
        return self._phase is _Phase.DONE

    def _result_start(self, payload: bytes) -> None:
        if is_err(payload):
            self._error(payload)
        elif is_ok(payload):
            ok = parse_ok(payload)
            if self._first:
                out = self.outcome
                out.affected, out.insert_id = ok.affected_rows, ok.last_insert_id
            self._end_of_result(ok.status)
        else:
            self._count = self._left = Reader(payload).lenenc_int()
            if self._left:
                self._phase = _Phase.COLUMNS
            else:
                self._phase = _Phase.ROWS if self.deprecate_eof else _Phase.COLUMNS_EOF

    def _end_of_result(self, status: int) -> None:
        if self._first:
            self.outcome.status = status
        self._first = False
        more = status & ServerStatus.MORE_RESULTS_EXISTS
        self._phase = _Phase.FIRST if more else _Phase.DONE

    def _error(self, payload: bytes) -> None:
        if self._first:
            err = parse_err(payload)
            self.outcome.error = (err.code, err.sqlstate or "HY000", err.message)
        self._phase = _Phase.DONE


class ResultTooLarge(Exception):
    """A result's rows are larger than the caller allowed."""


async def query(
    stream: PacketStream, sql: str, *, deprecate_eof: bool, max_bytes: int | None = None
) -> Outcome:
    """Send COM_QUERY and read its whole answer (see :class:`ResultParser`). With
    ``max_bytes``, rows beyond that many bytes are refused from each packet's header
    (:class:`ResultTooLarge`): a row of 1 GiB never reaches memory."""
    await stream.send(0, bytes([Command.QUERY]) + sql.encode())
    parser = ResultParser(deprecate_eof=deprecate_eof)
    while True:
        if max_bytes is not None and parser.reading_rows:
            payload = await _read_within(stream, max_bytes, parser.row_bytes)
        else:
            _, payload = await stream.read()
        if parser.feed(payload):
            return parser.outcome
        if max_bytes is not None and parser.row_bytes > max_bytes:
            raise ResultTooLarge(f"the result is larger than {max_bytes} bytes")


async def _read_within(stream: PacketStream, max_bytes: int, used: int) -> bytes:
    """The next packet, refused from its header when it is larger than what is left of
    ``max_bytes`` (an ERR, an EOF or an OK, which end a result, always fit)."""
    limit = stream.limit
    stream.limit = max(0, min(limit, max_bytes - used)) + END_PACKET_ROOM
    try:
        return (await stream.read())[1]
    except PacketTooLarge as exc:
        raise ResultTooLarge(f"the result is larger than {max_bytes} bytes") from exc
    finally:
        stream.limit = limit


async def reset(stream: PacketStream, *, timeout: float) -> bool:
    """COM_RESET_CONNECTION: the session back as it was at login (variables, temporary
    tables, the database, an open transaction rolled back). True when the server agreed."""
    await stream.send(0, bytes([Command.RESET_CONNECTION]))
    _, reply = await asyncio.wait_for(stream.read(), timeout)
    return reply[:1] == b"\x00"
