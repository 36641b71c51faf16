"""The fast lane's response scanner (C) against the pooler's ResponseReader (Python), for
the commands the lane runs: the same end, status, warnings, LAST_INSERT_ID and error for
every kind of response, however its bytes are cut, and nothing taken past its end."""

from __future__ import annotations

import os

import pytest

from selkie.mysql.packets import build_err, build_ok
from selkie.mysql.response import Event, ResponseReader
from selkie.mysql.wire import MAX_PAYLOAD, Command, ServerStatus, lenenc_int
from selkie.proxy.pooler import lane
from tests.mysql.test_response import MORE, column, eof, eof_ok, packets, result_set, row

if not lane.available():
    if os.environ.get("CI") == "true":
        raise RuntimeError("the pooler's fast lane (_lane.c) is not built")
    pytest.skip("the fast lane is not built here", allow_module_level=True)

from selkie.proxy.pooler._lane import Lane


def binary_row(*values: bytes) -> bytes:
    """A binary-protocol row: 0x00, the NULL bitmap, the values."""
    return b"\x00\x00" + b"".join(lenenc_int(len(v)) + v for v in values)


def responses(deprecate_eof: bool) -> dict[str, tuple[int, bytes]]:
    end = eof_ok if deprecate_eof else eof
    defs = [column(b"a")] + ([] if deprecate_eof else [eof()])
    return {
        "text result": (
            Command.QUERY,
            result_set(deprecate_eof, [row(b"1", b"x"), row(b"2", b"y" * 300)], status=0x22),
        ),
        "binary result": (
            Command.STMT_EXECUTE,
            packets(lenenc_int(1), *defs, binary_row(b"x" * 120), end(0x03, warnings=2)),
        ),
        "empty result": (Command.STMT_EXECUTE, packets(lenenc_int(1), *defs, end(0x02))),
        "ok": (
            Command.QUERY,
            packets(build_ok(affected_rows=1, last_insert_id=70000, status=0x03, warnings=1)),
        ),
        "err": (Command.QUERY, packets(build_err(1146, "Table 'x' doesn't exist"))),
        "err among rows": (
            Command.QUERY,
            packets(lenenc_int(1), *defs, row(b"1"), build_err(1317, "interrupted")),
        ),
        "more results": (
            Command.QUERY,
            packets(lenenc_int(1), *defs, row(b"1"), end(MORE), build_ok(status=0x02, warnings=0)),
        ),
        "a 16 MiB row beginning with 0xFE": (
            Command.QUERY,
            packets(
                lenenc_int(1),
                *defs,
                b"\xfe" + b"z" * (MAX_PAYLOAD - 1),
                b"tail",
                end(0x02),
            ),
        ),
    }


def python_reads(
    command: int, deprecate_eof: bool, data: bytes
) -> tuple[int, bool, int, int, int, bool]:
    reader = ResponseReader(command, deprecate_eof=deprecate_eof, status=2)
    out, event = reader.feed(data)
    s = reader.summary
    return (
        len(out),
        event is Event.DONE,
        s.status,
        s.warnings,
        s.last_insert_id,
        s.error is not None,
    )


BIG = "a 16 MiB row beginning with 0xFE"
# Every response cut every way (the 16 MiB one in pieces that still cut its headers).
CASES = [
    (name, d, piece)
    for d in (False, True)
    for name in responses(d)
    for piece in ((4097, 1 << 25) if name == BIG else (1, 3, 7, 4096))
]


@pytest.mark.parametrize(("name", "deprecate_eof", "piece"), CASES)
def test_the_scanner_reads_what_the_reader_reads(
    name: str, deprecate_eof: bool, piece: int
) -> None:
    command, data = responses(deprecate_eof)[name]
    expected = python_reads(command, deprecate_eof, data)
    assert expected[0] == len(data) and expected[1]
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)]
    # Bytes after the end are not taken: a server sends none, and they are not passed on.
    assert Lane.scan(command, deprecate_eof, 2, [*chunks, b"\x01\x00\x00\x01\x00"]) == expected


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_one_byte_short_is_not_the_end(deprecate_eof: bool) -> None:
    for command, data in responses(deprecate_eof).values():
        used, done, *_ = Lane.scan(command, deprecate_eof, 2, [data[:-1]])
        assert used == len(data) - 1 and not done


def test_a_status_without_a_terminator_stays_the_sessions() -> None:
    _, done, status, *_ = Lane.scan(Command.QUERY, True, ServerStatus.IN_TRANS, [b""])
    assert not done and status == ServerStatus.IN_TRANS
