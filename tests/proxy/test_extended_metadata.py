"""MariaDB's extended metadata through the proxy and the pooler: a client that asks for
MARIADB_CLIENT_EXTENDED_METADATA (as node's mysql2 and MariaDB's connectors do) gets a JSON
column's format, "json", in its column definitions; a client that does not gets plain
ones, also from a backend another kind of client used."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from selkie.mysql import auth
from selkie.mysql.packets import build_handshake_response, parse_handshake_v10
from selkie.mysql.stream import frame
from selkie.mysql.wire import PROXY_CAPABILITIES, Capability, Reader
from tests.proxy.conftest import Db
from tests.proxy.test_clients import mariadb_cli, pymysql_conn
from tests.proxy.test_fuzz import recv_packet

pytestmark = pytest.mark.timeout(120)

EXTENDED = int(PROXY_CAPABILITIES | Capability.MARIADB_EXTENDED_METADATA)
PLAIN = int(PROXY_CAPABILITIES & ~Capability.MARIADB_EXTENDED_METADATA)


def connect(db: Db, caps: int, *, pooled: bool = False) -> socket.socket:
    """A session logged in with exactly ``caps`` (DEPRECATE_EOF among them)."""
    sock = socket.create_connection(("127.0.0.1", db.port), timeout=30)
    greeting = parse_handshake_v10(recv_packet(sock)[1])
    assert greeting.capabilities & Capability.MARIADB_EXTENDED_METADATA
    assert not greeting.capabilities & Capability.LONG_PASSWORD  # a MariaDB server's greeting
    endpoint = f"{db.endpoint_id}-pooler" if pooled else db.endpoint_id
    response = build_handshake_response(
        capabilities=caps,
        max_packet_size=1 << 24,
        charset=45,
        user=f"{endpoint}.{db.role}",
        auth_response=auth.native_token(auth._sha1(db.password.encode()), greeting.scramble),
        database=db.database,
    )
    sock.sendall(frame(1, response)[0])
    reply = recv_packet(sock)[1]
    assert reply[:1] == b"\x00", reply
    return sock


def column_format(definition: bytes, caps: int) -> bytes | None:
    """The format in a ColumnDefinition41's extended metadata (None when it has none),
    after checking that the fixed fields follow where they should."""
    r = Reader(definition)
    for _ in range(6):  # catalog, schema, table, org_table, name, org_name
        r.lenenc_str()
    fmt = None
    if caps & Capability.MARIADB_EXTENDED_METADATA:
        extended = Reader(r.lenenc_str())
        while extended.remaining():
            kind, value = extended.int1(), extended.lenenc_str()
            if kind == 1:  # 0: the type's name, 1: its format
                fmt = value
    assert r.lenenc_int() == 0x0C
    return fmt


def rest_of_result(sock: socket.socket, columns: int) -> list[bytes]:
    """The column definitions of a result whose column count was read, then its rows up to
    the closing OK (DEPRECATE_EOF)."""
    definitions = [recv_packet(sock)[1] for _ in range(columns)]
    while True:
        packet = recv_packet(sock)[1]
        assert packet[:1] != b"\xff", packet
        if packet[:1] == b"\xfe" and len(packet) < 0xFFFFFF:
            return definitions


def query_formats(sock: socket.socket, caps: int, sql: bytes) -> list[bytes | None]:
    sock.sendall(frame(0, b"\x03" + sql)[0])
    first = recv_packet(sock)[1]
    assert first[:1] not in (b"\x00", b"\xff"), first
    columns = Reader(first).lenenc_int()
    return [column_format(d, caps) for d in rest_of_result(sock, columns)]


def prepared_formats(sock: socket.socket, caps: int, sql: bytes) -> list[bytes | None]:
    """COM_STMT_PREPARE then COM_STMT_EXECUTE: the formats in both responses' column
    definitions (the binary protocol's, which the pooler scans too)."""
    sock.sendall(frame(0, b"\x16" + sql)[0])
    ok = recv_packet(sock)[1]
    assert ok[0] == 0, ok
    stmt, columns, params = struct.unpack("<IHH", ok[1:9])
    assert params == 0
    formats = [column_format(recv_packet(sock)[1], caps) for _ in range(columns)]
    for _ in range(2):  # the pooler's fast lane runs it again
        sock.sendall(frame(0, b"\x17" + struct.pack("<IBI", stmt, 0, 1))[0])
        first = recv_packet(sock)[1]
        assert first[:1] not in (b"\x00", b"\xff"), first
        count = Reader(first).lenenc_int()
        formats += [column_format(d, caps) for d in rest_of_result(sock, count)]
    return formats


SELECT = b"SELECT id, doc FROM docs ORDER BY id"


def check(db: Db, *, pooled: bool) -> None:
    for caps, json in ((EXTENDED, b"json"), (PLAIN, None), (EXTENDED, b"json")):
        sock = connect(db, caps, pooled=pooled)
        try:
            for _ in range(2):  # the statement after a result starts where it should
                assert query_formats(sock, caps, SELECT) == [None, json]
            assert prepared_formats(sock, caps, SELECT) == [None, json] * 3
            assert query_formats(sock, caps, b"SELECT 1") == [None]
        finally:
            sock.sendall(frame(0, b"\x01")[0])
            sock.close()


async def test_json_format_through_the_proxy_and_the_pooler(db: Db) -> None:
    await db.update_endpoint({"pooler_enabled": True, "pooler_mode": "transaction"})

    def setup() -> None:
        c = pymysql_conn(db)
        with c.cursor() as cur:
            cur.execute("CREATE TABLE docs (id INT PRIMARY KEY, doc JSON)")
            cur.execute("""INSERT INTO docs VALUES (1, '{"a": [1, 2]}'), (2, NULL)""")
        c.close()

    await asyncio.to_thread(setup)
    await asyncio.to_thread(check, db, pooled=False)
    await asyncio.to_thread(check, db, pooled=True)
    assert db.platform.proxy is not None
    lane = db.platform.proxy.pools[db.endpoint_id].lane
    if lane is not None:  # the compiled lane ran some of them, reading the same definitions
        assert lane.c.commands > 0
    # The mariadb CLI (libmariadb asks for the extended metadata) reads it and shows it.
    pooled = f"--user={db.endpoint_id}-pooler.{db.role}"
    for extra in ((), (pooled,)):
        cli = await asyncio.to_thread(
            mariadb_cli, db, "SELECT doc FROM docs", "--column-type-info", "--table", *extra
        )
        assert cli.returncode == 0, cli.stderr
        assert "Type:       BLOB (format=json)" in cli.stdout, cli.stdout
        assert '{"a": [1, 2]}' in cli.stdout
