"""LOAD DATA LOCAL INFILE through the session relay: the file's packets count their sequence
ids past 255 back to 0, and a data packet that then starts with 0x11 (COM_CHANGE_USER's
byte) must reach the compute as data, not be taken for a command. But when the empty packet
that ends the file has sequence id 255, the next packet (sequence 0) is a command, and a
COM_CHANGE_USER there must be checked and rewritten by the proxy like any other. Both
scanners (CommandScanner, the compiled relay's), then real clients (PyMySQL sends 16 KiB
packets, MySQL Connector 131,056 bytes), plain (compiled relay) and TLS (Python) relays."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pymysql
import pytest

from selkie.mysql.wire import MAX_PAYLOAD
from selkie.proxy import crelay
from selkie.proxy.relay import CommandScanner, HeldChangeUser
from tests.proxy.conftest import Db
from tests.proxy.test_clients import connector

pytestmark = pytest.mark.timeout(180)

LINE = 16 * 1024  # PyMySQL's packet size for LOCAL INFILE: every packet starts a line
LINES = 300  # over 256 packets: the sequence ids wrap
CONNECTOR_PACKET = 131072 - 16  # MySQL Connector's packet size for LOCAL INFILE


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def scanners() -> list[str]:
    return ["python", "c"] if crelay.available() else ["python"]


def scan(which: str, stream: bytes) -> tuple[list[int], list[bytes]]:
    """The commands and the held COM_CHANGE_USER payloads, the stream fed whole and cut."""
    results = []
    for size in (len(stream), 4096, 7) if len(stream) < 1 << 20 else (len(stream), 65537):
        commands: list[int] = []
        held: list[bytes] = []
        if which == "python":
            scanner = CommandScanner()
            for i in range(0, len(stream), size):
                segments, cmds = scanner.feed(stream[i : i + size])
                commands += cmds
                held += [s.payload for s in segments if isinstance(s, HeldChangeUser)]
        else:
            from selkie.proxy._crelay import Session

            session = Session()
            for i in range(0, len(stream), size):
                c_segments, cmds = session.feed(stream[i : i + size])
                commands += cmds
                held += [data for kind, data in c_segments if kind]
        results.append((commands, held))
    assert results[1:] == results[:-1]
    return results[0]


QUERY = packet(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t")
CHANGE = b"\x11bob\x00"


@pytest.mark.parametrize("which", scanners())
def test_a_command_after_a_file_ending_at_sequence_255_is_seen(which: str) -> None:
    # The file's packets take 2..254, the empty one that ends it 255; the server answers
    # (0), and the client's next packet, sequence 0, is a command.
    data = b"".join(packet(seq, b"\x11data") for seq in range(2, 255))
    stream = QUERY + data + packet(255, b"") + packet(0, CHANGE)
    assert scan(which, stream) == ([0x03, 0x11], [CHANGE])
    # The same after a file that wrapped once already.
    more = b"".join(packet(seq % 256, b"\x11data") for seq in range(2, 511))
    stream = QUERY + more + packet(255, b"") + packet(0, b"\x03SELECT 1") + packet(0, CHANGE)
    assert scan(which, stream) == ([0x03, 0x03, 0x11], [CHANGE])


@pytest.mark.parametrize("which", scanners())
def test_the_file_goes_on_past_sequence_255(which: str) -> None:
    # A data packet at 255, or the empty piece ending a 16 MiB data packet at 255: the file
    # goes on at 0, and a data packet there is data, whatever its first byte.
    data = b"".join(packet(seq, b"\x11data") for seq in range(2, 256))
    stream = QUERY + data + packet(0, CHANGE) + packet(1, b"") + packet(0, CHANGE)
    assert scan(which, stream) == ([0x03, 0x11], [CHANGE])
    data = b"".join(packet(seq, b"\x11data") for seq in range(2, 254))
    split = b"\xff\xff\xff\xfe" + b"\x11" * MAX_PAYLOAD + packet(255, b"")
    stream = QUERY + data + split + packet(0, CHANGE) + packet(1, b"") + packet(0, CHANGE)
    assert scan(which, stream) == ([0x03, 0x11], [CHANGE])


def load(db: Db, path: Path, tls: bool) -> tuple[int, int, int]:
    extra = {}
    if tls:
        ctx = ssl.create_default_context(cafile=str(db.cert))
        ctx.check_hostname = False
        extra["ssl"] = ctx
    else:
        extra["ssl_disabled"] = True
    conn = pymysql.connect(
        host="127.0.0.1",
        port=db.port,
        user=db.user,
        password=db.password,
        database=db.database,
        local_infile=True,
        autocommit=True,
        **extra,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS f (b LONGBLOB)")
            cur.execute("DELETE FROM f")
            cur.execute(
                f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE f CHARACTER SET binary "
                "FIELDS ESCAPED BY '' LINES TERMINATED BY '\\n'"
            )
            cur.execute(
                "SELECT COUNT(*), SUM(LENGTH(b)), SUM(b = REPEAT(CHAR(17), %s)) FROM f", (LINE - 1,)
            )
            count, total, intact = cur.fetchone()
            cur.execute("SELECT 1")  # the session goes on after the file
            assert cur.fetchone() == (1,)
            return int(count), int(total), int(intact)
    finally:
        conn.close()


@pytest.mark.parametrize("tls", [False, True])
async def test_a_file_over_256_packets_of_0x11_bytes(db: Db, tmp_path: Path, tls: bool) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes((b"\x11" * (LINE - 1) + b"\n") * LINES)
    count, total, intact = await asyncio.to_thread(load, db, path, tls)
    assert (count, total, intact) == (LINES, LINES * (LINE - 1), LINES)


def change_user_after_file(db: Db, path: Path, tls: bool) -> tuple[int, str, int]:
    extra: dict[str, object] = {"allow_local_infile": True}
    if tls:
        extra.update(ssl_disabled=False, ssl_ca=str(db.cert), ssl_verify_cert=False)
    cnx = connector(db, **extra)
    try:
        cur = cnx.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS g (b LONGBLOB)")
        cur.execute("DELETE FROM g")
        cur.execute(
            f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE g CHARACTER SET binary "
            "FIELDS ESCAPED BY '' LINES TERMINATED BY '\\n'"
        )
        loaded = cur.rowcount
        # Seen by the proxy: the client's token answers the proxy's scramble, which only
        # the proxy can check and rewrite for the compute (passed on as it is, the compute
        # refuses it). Then a command on the new session.
        cnx.cmd_change_user(username=db.user, password=db.password, database=db.database)
        cur = cnx.cursor()
        cur.execute("SELECT CURRENT_USER(), COUNT(*) FROM g")
        user, count = cur.fetchone()
        return loaded, str(user), int(count)
    finally:
        cnx.close()


@pytest.mark.parametrize("tls", [False, True])
async def test_change_user_after_a_file_ending_at_sequence_255(
    db: Db, tmp_path: Path, tls: bool
) -> None:
    # 253 packets of data take sequence ids 2..254: the empty one that ends the file, 255.
    path = tmp_path / "data.bin"
    path.write_bytes((b"\x11" * (CONNECTOR_PACKET - 1) + b"\n") * 253)
    loaded, user, count = await asyncio.to_thread(change_user_after_file, db, path, tls)
    assert (loaded, user, count) == (253, f"{db.role}@localhost", 253)
