"""The client's conversation without a socket: a text result read packet by packet (one
result, several, an error in the middle, with and without CLIENT_DEPRECATE_EOF), a column
count past 250 (a length-encoded integer, not one byte), rows with NULLs, the bytes budget,
and answers to an auth switch."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from selkie.mysql import auth
from selkie.mysql.client import (
    ResultParser,
    ResultTooLarge,
    auth_switch_answer,
    packets,
    query,
    text_row,
)
from selkie.mysql.packets import build_auth_switch_request, build_err, build_ok
from selkie.mysql.stream import PacketStream, frame
from selkie.mysql.wire import MAX_PAYLOAD, ProtocolError, ServerStatus, int2, lenenc_int

MORE = ServerStatus.MORE_RESULTS_EXISTS | ServerStatus.AUTOCOMMIT
IN_TRANS = ServerStatus.IN_TRANS | ServerStatus.AUTOCOMMIT


def column(name: bytes) -> bytes:
    def s(v: bytes) -> bytes:
        return lenenc_int(len(v)) + v

    fixed = int2(33) + (11).to_bytes(4, "little") + bytes([253]) + int2(0) + b"\x00" + b"\0\0"
    return s(b"def") + s(b"db") + s(b"t") + s(b"t") + s(name) + s(name) + b"\x0c" + fixed


def row(*values: bytes | None) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_int(len(v)) + v for v in values)


def eof(status: int) -> bytes:
    return b"\xfe" + int2(0) + int2(status)


def eof_ok(status: int) -> bytes:
    return b"\xfe" + build_ok(status=status)[1:]


def result(names: list[bytes], rows: list[bytes], status: int, deprecate_eof: bool) -> list[bytes]:
    out = [lenenc_int(len(names)), *(column(n) for n in names)]
    if not deprecate_eof:
        out.append(eof(ServerStatus.AUTOCOMMIT))
    return [*out, *rows, eof_ok(status) if deprecate_eof else eof(status)]


def parse(payloads: list[bytes], deprecate_eof: bool) -> ResultParser:
    parser = ResultParser(deprecate_eof=deprecate_eof)
    for i, payload in enumerate(payloads):
        done = parser.feed(payload)
        assert done == (i == len(payloads) - 1), (i, payload)
    return parser


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_a_result_set_with_nulls(deprecate_eof: bool) -> None:
    rows = [row(b"1", None), row(b"", b"x" * 300)]
    out = parse(result([b"a", b"b"], rows, IN_TRANS, deprecate_eof), deprecate_eof).outcome
    assert [c.name for c in out.columns] == ["a", "b"]
    assert out.columns[0].table == "t" and out.columns[0].type == 253
    assert out.rows == [[b"1", None], [b"", b"x" * 300]]
    assert out.in_transaction and out.error is None


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_later_results_are_read_and_dropped(deprecate_eof: bool) -> None:
    first = result([b"a"], [row(b"1")], MORE, deprecate_eof)
    ok = build_ok(affected_rows=3, status=MORE)
    second = result([b"b"], [row(b"2")], ServerStatus.AUTOCOMMIT, deprecate_eof)
    out = parse([*first, ok, *second], deprecate_eof).outcome
    assert out.rows == [[b"1"]] and [c.name for c in out.columns] == ["a"]
    assert out.status == MORE and out.affected == 0


def test_an_error_in_a_later_result_ends_the_answer_and_is_not_the_first_results() -> None:
    first = result([b"a"], [row(b"1")], MORE, True)
    out = parse([*first, build_err(1146, "no such table")], True).outcome
    assert out.rows == [[b"1"]] and out.error is None


def test_ok_and_error_answers() -> None:
    ok = parse([build_ok(affected_rows=2, last_insert_id=7, status=IN_TRANS)], True).outcome
    assert (ok.affected, ok.insert_id, ok.in_transaction, ok.rows) == (2, 7, True, [])
    err = parse([build_err(1064, "bad", "42000")], True).outcome
    assert err.error == (1064, "42000", "bad")
    # An error after some rows (a statement killed mid-result).
    mid = [lenenc_int(1), column(b"a"), row(b"1"), build_err(1317, "interrupted")]
    assert parse(mid, True).outcome.error == (1317, "HY000", "interrupted")


def test_more_than_250_columns() -> None:
    """The count is a length-encoded integer: 300 is 0xFC 0x2C 0x01, not 0xFC columns."""
    names = [b"c%d" % i for i in range(300)]
    values = [b"%d" % i for i in range(300)]
    payloads = result(names, [row(*values)], ServerStatus.AUTOCOMMIT, False)
    assert payloads[0] == b"\xfc\x2c\x01"
    out = parse(payloads, False).outcome
    assert len(out.columns) == 300 and out.rows == [values]


def test_text_row_and_packets() -> None:
    assert text_row(row(None, b"ab", b""), 3) == [None, b"ab", b""]
    big = b"z" * MAX_PAYLOAD + b"tail"
    data = frame(1, b"one")[0] + frame(2, big)[0] + frame(4, b"three")[0]
    assert packets(data) == [b"one", big, b"three"]
    assert packets(data[:-1]) == [b"one", big]  # a packet cut short is not one yet


async def test_rows_past_the_budget_are_refused_from_their_header() -> None:
    payloads = result([b"a"], [row(b"x" * 100), row(b"y" * 5000)], 2, True)
    reader = asyncio.StreamReader()
    for seq, payload in enumerate(payloads, start=1):
        reader.feed_data(frame(seq, payload)[0])

    class Sink:
        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            pass

    stream = PacketStream(reader, Sink(), limit=1 << 24)  # type: ignore[arg-type]
    with pytest.raises(ResultTooLarge, match="larger than 1000 bytes"):
        await query(stream, "SELECT a FROM t", deprecate_eof=True, max_bytes=1000)
    assert stream.limit == 1 << 24  # put back


def test_auth_switch_answers() -> None:
    scramble = bytes(range(20))
    stage1 = hashlib.sha1(b"secret").digest()
    native = build_auth_switch_request("mysql_native_password", scramble)
    assert auth_switch_answer(native, stage1) == (auth.native_token(stage1, scramble), scramble)
    socket = build_auth_switch_request("unix_socket", b"")
    assert auth_switch_answer(socket, None) == (b"", b"")
    with pytest.raises(ProtocolError, match="ed25519"):
        auth_switch_answer(build_auth_switch_request("client_ed25519", scramble), stage1)
    with pytest.raises(ProtocolError):
        auth_switch_answer(native, None)  # no password to answer with
