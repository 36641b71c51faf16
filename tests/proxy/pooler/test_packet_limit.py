"""A pooled session holds at most the pooler's packet limit: a bigger command is answered
with ERR 1153 (SQLSTATE 08S01) before anything past the limit is read, only that session
ends, and the pooler serves the next client as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from selkie.mysql.packets import parse_err
from selkie.mysql.stream import frame
from tests.proxy.conftest import Db
from tests.proxy.pooler.test_pool import pooled_db, pooled_platform, raw_pooled
from tests.proxy.test_fuzz import recv_packet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def db(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Db]:
    p = await pooled_platform(tmp_path, template_datadir, cap=2)
    try:
        yield await pooled_db(p)
    finally:
        await p.stop()


def oversized(db: Db, limit: int) -> tuple[int, bytes]:
    sock = raw_pooled(db)
    try:
        # Only the header and a little of the body: the proxy must not wait for the rest.
        query = b"\x03SELECT '" + b"x" * limit + b"'"
        sock.sendall(frame(0, query)[0][:4096])
        return recv_packet(sock)
    finally:
        sock.close()


def small_query(db: Db) -> bytes:
    sock = raw_pooled(db)
    try:
        sock.sendall(frame(0, b"\x03SELECT 41 + 1")[0])
        recv_packet(sock)  # column count
        recv_packet(sock)  # the column
        row = recv_packet(sock)[1]
        if row[:1] == b"\xfe":  # an EOF after the columns (without CLIENT_DEPRECATE_EOF)
            row = recv_packet(sock)[1]
        return row
    finally:
        sock.close()


async def test_a_command_over_the_limit_is_refused_and_nothing_else(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.pooler.max_packet = 256 * 1024
    seq, payload = await asyncio.to_thread(oversized, db, 256 * 1024)
    err = parse_err(payload)
    assert (seq, err.code, err.sqlstate) == (1, 1153, "08S01")
    assert "256" in err.message or "262144" in err.message
    assert await asyncio.to_thread(small_query, db) == b"\x0242"


def short_statement(db: Db, payload: bytes) -> tuple[int, bytes]:
    sock = raw_pooled(db)
    try:
        sock.sendall(frame(0, payload)[0])
        return recv_packet(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("payload", [b"\x17", b"\x17\x01\x00", b"\x19\x01", b"\x1a"])
async def test_a_short_statement_command_ends_its_session_quietly(
    db: Db, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    seq, answer = await asyncio.to_thread(short_statement, db, payload)
    err = parse_err(answer)
    assert (seq, err.code, err.sqlstate) == (1, 1835, "HY000")
    assert "crashed" not in caplog.text and "Traceback" not in caplog.text
    assert await asyncio.to_thread(small_query, db) == b"\x0242"
