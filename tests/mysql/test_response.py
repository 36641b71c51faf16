"""The pooler's response reader, fed bytes without any socket: where each kind of response
ends, what it says about the session, and that every byte fed comes out once, in order,
however the bytes are cut."""

from __future__ import annotations

import pytest

from selkie.mysql.packets import build_err, build_ok
from selkie.mysql.response import Event, Phase, ResponseReader
from selkie.mysql.stream import frame
from selkie.mysql.wire import MAX_PAYLOAD, Command, ServerStatus, int2, int4, lenenc_int

MORE = ServerStatus.MORE_RESULTS_EXISTS | ServerStatus.AUTOCOMMIT


def packets(*payloads: bytes) -> bytes:
    out = b""
    for seq, payload in enumerate(payloads, start=1):
        out += frame(seq, payload)[0]
    return out


def eof(status: int = ServerStatus.AUTOCOMMIT, warnings: int = 0) -> bytes:
    return b"\xfe" + int2(warnings) + int2(status)


def eof_ok(status: int = ServerStatus.AUTOCOMMIT, warnings: int = 0) -> bytes:
    """The OK that ends a result set for a client with DEPRECATE_EOF (0xFE header)."""
    return b"\xfe" + build_ok(status=status, warnings=warnings)[1:]


def column(name: bytes) -> bytes:
    return b"\x03def" + b"\x00" * 3 + bytes([len(name)]) + name + b"\x00" + b"\x0c" + b"\x00" * 12


def row(*values: bytes) -> bytes:
    return b"".join(lenenc_int(len(v)) + v for v in values)


def result_set(deprecate_eof: bool, rows: list[bytes], status: int = 2) -> bytes:
    parts = [lenenc_int(2), column(b"a"), column(b"b")]
    if not deprecate_eof:
        parts.append(eof())
    parts += rows
    parts.append(eof_ok(status) if deprecate_eof else eof(status))
    return packets(*parts)


def read_all(reader: ResponseReader, data: bytes, piece: int) -> tuple[bytes, list[Event]]:
    """Feed ``data`` in pieces of ``piece`` bytes until the reader says done."""
    out = b""
    events = []
    for i in range(0, len(data), piece):
        chunk, event = reader.feed(data[i : i + piece])
        out += chunk
        events.append(event)
        if event is Event.DONE:
            break
    return out, events


@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_a_result_set_ends_at_its_terminator_however_it_is_cut(
    piece: int, deprecate_eof: bool
) -> None:
    data = result_set(deprecate_eof, [row(b"1", b"x"), row(b"2", b"y" * 300)], status=0x22)
    reader = ResponseReader(Command.QUERY, deprecate_eof=deprecate_eof, status=2)
    out, events = read_all(reader, data, piece)
    assert out == data
    assert events[-1] is Event.DONE and set(events[:-1]) <= {Event.NEED_DATA}
    # The whole response was needed: one byte short, and it is not over.
    short = ResponseReader(Command.QUERY, deprecate_eof=deprecate_eof, status=2)
    assert short.feed(data[:-1])[1] is Event.NEED_DATA
    assert reader.summary.status == 0x22 and reader.summary.error is None


def test_ok_carries_status_warnings_and_last_insert_id() -> None:
    reader = ResponseReader(Command.QUERY, deprecate_eof=True, status=2)
    ok = build_ok(last_insert_id=42, status=ServerStatus.IN_TRANS, warnings=3)
    out, event = reader.feed(packets(ok))
    assert event is Event.DONE and out == packets(ok)
    s = reader.summary
    assert (s.last_insert_id, s.status, s.warnings, s.error) == (42, ServerStatus.IN_TRANS, 3, None)


def test_err_first_and_err_among_rows() -> None:
    reader = ResponseReader(Command.QUERY, deprecate_eof=False, status=2)
    _, event = reader.feed(packets(build_err(1146, "Table 't' doesn't exist", "42S02")))
    assert event is Event.DONE
    assert reader.summary.error is not None
    assert (reader.summary.error.code, reader.summary.error.sqlstate) == (1146, "42S02")
    # An ERR after some rows (a query killed mid-way) ends the response too.
    data = packets(lenenc_int(1), column(b"a"), eof(), row(b"1"), build_err(1317, "interrupted"))
    reader = ResponseReader(Command.QUERY, deprecate_eof=False, status=2)
    out, event = reader.feed(data)
    assert event is Event.DONE and out == data
    assert reader.summary.error is not None and reader.summary.error.code == 1317


def test_more_results_continue_until_the_last() -> None:
    first = result_set(False, [row(b"1", b"2")], status=MORE)
    second_ok = build_ok(status=ServerStatus.AUTOCOMMIT)
    data = first + frame(9, build_ok(status=MORE))[0] + frame(10, second_ok)[0]
    reader = ResponseReader(Command.QUERY, deprecate_eof=False, status=2)
    out, events = read_all(reader, data, 5)
    assert out == data and events[-1] is Event.DONE
    assert not reader.summary.status & ServerStatus.MORE_RESULTS_EXISTS
    # Stopped right after the first result set: more is expected.
    reader = ResponseReader(Command.QUERY, deprecate_eof=False, status=2)
    assert reader.feed(first)[1] is Event.NEED_DATA
    assert reader.phase is Phase.FIRST


def test_local_infile_asks_for_the_clients_file_then_goes_on() -> None:
    reader = ResponseReader(Command.QUERY, deprecate_eof=True, status=2)
    request = packets(b"\xfb/tmp/data.csv")
    out, event = reader.feed(request)
    assert event is Event.LOCAL_INFILE and out == request
    # The proxy sends the file; then the server's OK ends the response.
    ok = frame(3, build_ok(status=2))[0]
    out, event = reader.feed(ok)
    assert event is Event.DONE and out == ok


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_prepare_reads_parameters_and_columns(deprecate_eof: bool) -> None:
    head = b"\x00" + int4(7) + int2(1) + int2(2) + b"\x00" + int2(0)  # 1 column, 2 params
    parts = [head, column(b"?"), column(b"?")]
    if not deprecate_eof:
        parts.append(eof())
    parts.append(column(b"a"))
    if not deprecate_eof:
        parts.append(eof())
    data = packets(*parts)
    reader = ResponseReader(Command.STMT_PREPARE, deprecate_eof=deprecate_eof, status=2)
    head_out, event = reader.feed(data[:-1])
    assert event is Event.NEED_DATA
    out, event = reader.feed(data[-1:])
    assert event is Event.DONE and head_out + out == data
    assert (reader.summary.stmt_id, reader.summary.num_params) == (7, 2)


def test_commands_without_a_response_are_over_at_once() -> None:
    for command in (Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA):
        reader = ResponseReader(command, deprecate_eof=True, status=3)
        assert reader.feed(b"") == (b"", Event.DONE)
        assert reader.summary.status == 3


def test_field_list_and_statistics() -> None:
    data = packets(column(b"a"), column(b"b"), eof())
    reader = ResponseReader(Command.FIELD_LIST, deprecate_eof=True, status=2)
    assert reader.feed(data) == (data, Event.DONE)
    stats = packets(b"Uptime: 5  Threads: 1")
    reader = ResponseReader(Command.STATISTICS, deprecate_eof=True, status=2)
    assert reader.feed(stats) == (stats, Event.DONE)


def test_a_16_mib_row_beginning_with_0xfe_is_a_row() -> None:
    """A row split over 16 MiB frames: its continuation frames are not packets of their
    own, and a full-length first frame is never taken for the terminator."""
    big = b"\xfe" + b"r" * (MAX_PAYLOAD - 1)
    rest = b"tail"
    data = (
        packets(lenenc_int(1), column(b"a"))
        + frame(3, big)[0]
        + frame(4, rest)[0]
        + frame(5, eof_ok())[0]
    )
    reader = ResponseReader(Command.QUERY, deprecate_eof=True, status=2)
    out, events = read_all(reader, data, 1 << 20)
    assert events[-1] is Event.DONE and out == data


def test_bytes_after_the_end_are_not_passed_on() -> None:
    ok = packets(build_ok())
    reader = ResponseReader(Command.QUERY, deprecate_eof=True, status=2)
    out, event = reader.feed(ok + b"\x01\x00\x00\x00\x00")
    assert event is Event.DONE and out == ok
    assert reader.feed(b"more") == (b"", Event.DONE)
