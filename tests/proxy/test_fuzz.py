"""Hypothesis feeds the proxy malformed, truncated and random handshake and command packets:
each bad connection is closed alone, the proxy never dies, and a session opened before the
fuzzing keeps working."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selkie.mysql import auth
from selkie.mysql.packets import build_handshake_response, parse_handshake_v10
from selkie.mysql.stream import frame
from selkie.mysql.wire import PROXY_CAPABILITIES
from tests.proxy.conftest import Db
from tests.proxy.test_clients import pymysql_conn

pytestmark = pytest.mark.timeout(300)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def recv_packet(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            raise ConnectionError("closed")
        header += chunk
    length = int.from_bytes(header[:3], "little")
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return header[3], body


def drain(sock: socket.socket) -> bytes:
    """Whatever the proxy answers until it closes or goes quiet."""
    sock.settimeout(0.05)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
            if len(out) > 1 << 20:
                break
    except (TimeoutError, OSError):
        pass
    return out


def valid_response(db: Db, scramble: bytes, *, user: str | None = None) -> bytes:
    stage1 = auth._sha1(db.password.encode())
    return build_handshake_response(
        capabilities=int(PROXY_CAPABILITIES),
        max_packet_size=1 << 24,
        charset=45,
        user=user or db.user,
        auth_response=auth.native_token(stage1, scramble),
        database=db.database,
    )


def open_raw(db: Db) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", db.port), timeout=10)
    _, greeting = recv_packet(sock)
    return sock, parse_handshake_v10(greeting).scramble


def login(db: Db, *, user: str | None = None) -> socket.socket:
    sock, scramble = open_raw(db)
    sock.sendall(frame(1, valid_response(db, scramble, user=user))[0])
    _, reply = recv_packet(sock)
    assert reply[:1] == b"\x00", reply
    return sock


mutations = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, 200), st.binary(max_size=8)),  # truncate / splice a valid one
)


async def test_fuzzed_handshakes_and_commands(db: Db) -> None:
    survivor = await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    with survivor.cursor() as cur:
        cur.execute("CREATE TABLE keep (i INT)")

    @FUZZ
    @given(data=mutations, raw_header=st.booleans(), seq=st.integers(0, 255))
    def handshake(data: object, raw_header: bool, seq: int) -> None:
        sock, scramble = open_raw(db)
        try:
            if isinstance(data, tuple):
                cut, junk = data
                good = valid_response(db, scramble)
                payload = good[:cut] + junk
            else:
                payload = data  # type: ignore[assignment]
            if raw_header:
                sock.sendall(payload)  # no framing at all
            else:
                sock.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload)
            reply = drain(sock)
            # Whatever came back is a well-formed ERR or OK (never a client-range code).
            if len(reply) > 6 and reply[4] == 0xFF:
                code = int.from_bytes(reply[5:7], "little")
                assert 1000 <= code < 2000, code
        finally:
            sock.close()

    @FUZZ
    @given(body=st.binary(max_size=200), seq=st.integers(0, 3), cut=st.integers(0, 6))
    def command(body: bytes, seq: int, cut: int) -> None:
        sock = login(db)
        try:
            packet = struct.pack("<I", len(body))[:3] + bytes([seq]) + body
            sock.sendall(packet[: len(packet) - cut] if cut else packet)
            drain(sock)
        finally:
            sock.close()

    await asyncio.to_thread(handshake)
    await asyncio.to_thread(command)

    # The proxy is alive, the session opened before the fuzzing still works, and so do new ones.
    def check() -> tuple:  # type: ignore[type-arg]
        with survivor.cursor() as cur:
            cur.execute("INSERT INTO keep VALUES (1)")
            cur.execute("SELECT COUNT(*) FROM keep")
            before = cur.fetchone()
        fresh = pymysql_conn(db, ssl_disabled=True)
        try:
            with fresh.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM keep")
                return before, cur.fetchone()
        finally:
            fresh.close()

    assert await asyncio.to_thread(check) == ((1,), (1,))
    survivor.close()
