"""Before a client has authenticated it holds little and not for long: one deadline covers the
whole pre-auth phase (an AuthSwitchRequest left unanswered included), and caps on such
connections, in all and per address, answer ERR 1040 (SQLSTATE 08004) beyond them."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time

import pymysql
import pytest

from selkie.mysql.packets import (
    Capability,
    build_handshake_response,
    parse_auth_switch_request,
    parse_err,
)
from selkie.mysql.stream import frame
from selkie.proxy.proxyproto import SIGNATURE_V2
from tests.proxy.conftest import Db

pytestmark = pytest.mark.timeout(120)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(4)
    length = int.from_bytes(header[:3], "little")
    return header[3], await reader.readexactly(length)


def wrong_login(db: Db, plugin: str = "mysql_native_password") -> bytes:
    """A HandshakeResponse for the endpoint's role with a wrong token, framed."""
    hello = build_handshake_response(
        capabilities=Capability.PROTOCOL_41,
        max_packet_size=1 << 24,
        charset=45,
        user=db.user,
        auth_response=b"\x01" * 20,
        database=None,
        auth_plugin=plugin,
    )
    return frame(1, hello)[0]


async def test_an_unanswered_auth_switch_is_cut_at_the_deadline(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.config = dataclasses.replace(proxy.config, handshake_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", db.port)
    await read_packet(reader)  # the greeting
    writer.write(wrong_login(db, plugin="caching_sha2_password"))
    t0 = time.monotonic()
    _, switch = await read_packet(reader)
    assert parse_auth_switch_request(switch)[0] == "mysql_native_password"
    # Say nothing more: the proxy closes the connection once the pre-auth deadline passes.
    rest = await asyncio.wait_for(reader.read(), timeout=10)
    assert rest == b""
    assert time.monotonic() - t0 < 3
    assert proxy.admission.waiting == 0
    writer.close()


async def test_caps_on_connections_not_yet_authenticated(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.admission.per_address = 3
    silent = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", db.port)
        await read_packet(reader)  # greeted, then silent
        silent.append(writer)
    reader, writer = await asyncio.open_connection("127.0.0.1", db.port)
    seq, payload = await read_packet(reader)
    err = parse_err(payload)
    assert (seq, err.code, err.sqlstate) == (0, 1040, "08004")
    assert await reader.read() == b""
    writer.close()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        await asyncio.to_thread(
            pymysql.connect, host="127.0.0.1", port=db.port, user=db.user, password=db.password
        )
    assert refused.value.args[0] == 1040
    assert proxy.admission.waiting == 3 and proxy.admission.refused["address"] == 2
    metrics = db.platform.prometheus().decode()
    assert 'selkie_proxy_preauth_refused_total{cap="address"} 2.0' in metrics
    assert "selkie_proxy_preauth_connections 3.0" in metrics
    # The cap is on the pre-auth phase only: once they are gone, clients get in again.
    for w in silent:
        w.close()
    deadline = time.monotonic() + 5
    while proxy.admission.waiting and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    conn = await asyncio.to_thread(
        pymysql.connect, host="127.0.0.1", port=db.port, user=db.user, password=db.password
    )
    conn.close()
    # A global cap too.
    proxy.admission.total = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", db.port)
    assert parse_err((await read_packet(reader))[1]).code == 1040
    assert proxy.admission.refused["total"] == 1
    writer.close()


def proxy_v2(source: str) -> bytes:
    body = ipaddress.IPv4Address(source).packed + bytes([127, 0, 0, 1]) + b"\x30\x39\x18\x81"
    return SIGNATURE_V2 + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body


async def denied_as(db: Db, header: bytes) -> str:
    """Send ``header``, then a login with a wrong password; the ERR's message."""
    reader, writer = await asyncio.open_connection("127.0.0.1", db.port)
    writer.write(header)
    await read_packet(reader)
    writer.write(wrong_login(db))
    _, payload = await read_packet(reader)
    writer.close()
    return parse_err(payload).message


async def test_the_proxy_protocol_gives_the_real_client_address(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.config = dataclasses.replace(proxy.config, proxy_protocol=True)
    assert "'@'203.0.113.7'" in await denied_as(db, proxy_v2("203.0.113.7"))
    line = b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 6033\r\n"
    assert "'@'198.51.100.9'" in await denied_as(db, line)
    # The balancer's own health check (LOCAL) keeps the socket's address.
    local = SIGNATURE_V2 + bytes([0x20, 0x00, 0, 0])
    assert "'@'127.0.0.1'" in await denied_as(db, local)
    # Without a header the connection is closed before anything is said.
    reader, writer = await asyncio.open_connection("127.0.0.1", db.port)
    writer.write(b"\x00" * 16)
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    # The per-address cap applies to the real address, not to the balancer's.
    proxy.admission.per_address = 1
    reader, writer = await asyncio.open_connection("127.0.0.1", db.port)
    writer.write(proxy_v2("203.0.113.7"))
    await read_packet(reader)  # greeted, then silent: 203.0.113.7 is at its cap
    other = await denied_as(db, proxy_v2("203.0.113.8"))
    assert "203.0.113.8" in other
    r2, w2 = await asyncio.open_connection("127.0.0.1", db.port)
    w2.write(proxy_v2("203.0.113.7"))
    assert parse_err((await read_packet(r2))[1]).code == 1040
    for w in (writer, w2):
        w.close()
