"""One statement on a compute connection, its answer read whole: an OK (rows affected, the
insert id, the server status), an ERR, or a text-protocol result set (column definitions,
then rows of length-encoded strings, NULL as 0xFB)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from selkie.mysql.packets import is_err, parse_err, parse_ok
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Command, PacketTooLarge, Reader, ServerStatus

# The most bytes of rows one answer may hold (a request is answered whole).
MAX_RESULT_BYTES = 10 << 20
# Room for the packet that ends a result (an ERR's message, an OK's info) past the budget.
END_PACKET_ROOM = 1 << 10


@dataclass(frozen=True)
class Column:
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


@dataclass
class Outcome:
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


class ResultTooLarge(Exception):
    pass


def _column(payload: bytes) -> Column:
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


def _row(payload: bytes, count: int) -> list[bytes | None]:
    r = Reader(payload)
    values: list[bytes | None] = []
    for _ in range(count):
        if r.data[r.pos] == 0xFB:
            r.pos += 1
            values.append(None)
        else:
            values.append(r.lenenc_str())
    return values


async def run_query(
    stream: PacketStream, sql: str, *, timeout: float, deprecate_eof: bool
) -> Outcome:
    """Send COM_QUERY and read its whole answer (only the first result of several).
    ``deprecate_eof``: the connection has CLIENT_DEPRECATE_EOF (no EOF after the columns;
    the rows end with an OK packet whose header is 0xFE)."""
    await stream.send(0, bytes([Command.QUERY]) + sql.encode())
    return await asyncio.wait_for(_read(stream, deprecate_eof), timeout)


async def _read(stream: PacketStream, deprecate_eof: bool, *, drain: bool = True) -> Outcome:
    _, first = await stream.read()
    if is_err(first):
        err = parse_err(first)
        return Outcome(error=(err.code, err.sqlstate or "HY000", err.message))
    if first[:1] == b"\x00":
        ok = parse_ok(first)
        out = Outcome(affected=ok.affected_rows, insert_id=ok.last_insert_id, status=ok.status)
        if drain:
            await _drain_more(stream, out.status, deprecate_eof)
        return out
    count = Reader(first).lenenc_int()
    out = Outcome()
    for _ in range(count):
        out.columns.append(_column((await stream.read())[1]))
    if not deprecate_eof:
        await stream.read()  # the EOF after the columns
    size = 0
    while True:
        _, payload = await _read_within(stream, MAX_RESULT_BYTES - size)
        if is_err(payload):
            err = parse_err(payload)
            out.error = (err.code, err.sqlstate or "HY000", err.message)
            return out
        if payload[:1] == b"\xfe" and len(payload) < 0xFFFFFF:
            if deprecate_eof:
                out.status = parse_ok(payload).status  # an OK with the EOF header
            else:
                out.status = int.from_bytes(payload[3:5], "little")  # EOF: warnings, status
            break
        size += len(payload)
        if size > MAX_RESULT_BYTES:
            raise ResultTooLarge(f"the result is larger than {MAX_RESULT_BYTES} bytes")
        out.rows.append(_row(payload, count))
    if drain:
        await _drain_more(stream, out.status, deprecate_eof)
    return out


async def _read_within(stream: PacketStream, budget: int) -> tuple[int, bytes]:
    """The next packet, refused from its header when it is larger than what the result
    may still hold: a row of 1 GiB never reaches memory (an ERR, an EOF or an OK, which end
    a result, always fit)."""
    limit = stream.limit
    stream.limit = max(0, min(limit, budget)) + END_PACKET_ROOM
    try:
        return await stream.read()
    except PacketTooLarge as exc:
        raise ResultTooLarge(f"the result is larger than {MAX_RESULT_BYTES} bytes") from exc
    finally:
        stream.limit = limit


async def _drain_more(stream: PacketStream, status: int, deprecate_eof: bool) -> None:
    """Read and drop further results of a multi-statement query (only the first is
    answered), so the connection is ready for the next command."""
    while status & ServerStatus.MORE_RESULTS_EXISTS:
        # One result at a time, each saying whether another follows (reading on from
        # inside would take the second's "more" for the last one's, and wait for ever).
        more = await _read(stream, deprecate_eof, drain=False)
        if more.error is not None:
            return  # an error ends a multi-statement query
        status = more.status


async def reset(stream: PacketStream, *, timeout: float) -> bool:
    """COM_RESET_CONNECTION: the session back as it was at login (variables, temporary
    tables, the database, an open transaction rolled back). True when the server agreed."""
    await stream.send(0, bytes([Command.RESET_CONNECTION]))
    _, reply = await asyncio.wait_for(stream.read(), timeout)
    return reply[:1] == b"\x00"
