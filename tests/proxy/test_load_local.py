"""LOAD DATA LOCAL INFILE through the session relay: the file's packets count their sequence
ids past 255 back to 0, and a data packet that then starts with 0x11 (COM_CHANGE_USER's
byte) must reach the compute as data, not be taken for a command. Real clients (PyMySQL
sends 16 KiB packets), plain and TLS relays."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pymysql
import pytest

from tests.proxy.conftest import Db

pytestmark = pytest.mark.timeout(180)

LINE = 16 * 1024  # PyMySQL's packet size for LOCAL INFILE: every packet starts a line
LINES = 300  # over 256 packets: the sequence ids wrap


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
