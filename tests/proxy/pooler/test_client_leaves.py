"""A pooled client that leaves while its result is still on its way: the backend that was
sending it must never reach another client (issue 34). Each way of leaving — EOF, RST,
COM_QUIT mid-result, a multi-statement query cut in its second result — on the fast lane
(plaintext), in Python (``proxy_relay = python``, and TLS), each followed by six clients
that must all be served and the pool back to no backend in use and no session left."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymysql
import pytest
from pymysql.constants import CLIENT, COMMAND

from selkie.platform import Platform
from tests.proxy.conftest import Db
from tests.proxy.pooler.test_lane import platform, require_lane
from tests.proxy.pooler.test_pool import conn, pool, pooled_db, q

pytestmark = pytest.mark.timeout(300)

BIG = "SELECT REPEAT('x', 1000) FROM seq_1_to_20000"  # about 20 MB
MULTI = "SELECT 1; " + BIG


@pytest.fixture
async def db(
    tmp_path: Path, template_datadir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Db]:
    """A pooled endpoint with two backends; ``auto`` (the fast lane for plaintext) or
    ``python`` as ``proxy_relay``."""
    relay = getattr(request, "param", "auto")
    if relay != "python":
        require_lane()
    p: Platform = await platform(tmp_path, template_datadir, cap=2, wait=20, relay=relay)
    try:
        yield await pooled_db(p)
    finally:
        await p.stop()
        p.close()


def client(db: Db, *, tls: bool, multi: bool = False) -> pymysql.Connection:  # type: ignore[type-arg]
    kw: dict[str, object] = {"read_timeout": 10, "write_timeout": 10, "connect_timeout": 10}
    if tls:
        kw.update(ssl_disabled=False, ssl_ca=str(db.cert), ssl_verify_cert=False)
    if multi:
        kw["client_flag"] = CLIENT.MULTI_STATEMENTS
    return conn(db, **kw)  # type: ignore[no-any-return]


def leave_mid_result(db: Db, how: str, *, tls: bool, sql: str = BIG, lane: bool) -> None:
    """A client sends ``sql``, reads none of its result and leaves after a second by
    ``how``. With ``lane``, the text is run once to its end first, so the lane knows it
    plain and runs it the second time (a plaintext session parked there)."""
    multi = sql != BIG
    if lane:
        warm = client(db, tls=tls, multi=multi)
        with warm.cursor() as cur:
            cur.execute(sql)
            while cur.nextset():
                pass
        warm.close()
    c = client(db, tls=tls, multi=multi)
    before = pool(db).metrics()["fast_lane_commands"]
    c._execute_command(COMMAND.COM_QUERY, sql)  # sent; nothing of the answer read
    time.sleep(1)
    sock = c._sock
    assert sock is not None
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif how == "quit":
        c._next_seq_id = 0
        c._write_bytes(struct.pack("<I", 1)[:3] + b"\x00" + bytes([COMMAND.COM_QUIT]))
        time.sleep(0.2)
    sock.close()
    if lane:
        assert pool(db).metrics()["fast_lane_commands"] > before, "the lane did not run it"


def six_clients(db: Db, *, tls: bool, multi: bool) -> list[object]:
    """Six clients at once, each ``SELECT 1`` with a 10 s timeout: what each got (of the
    same kind as the one that left, so the backend it left is theirs to get)."""

    def one(_: int) -> object:
        try:
            c = client(db, tls=tls, multi=multi)
            try:
                return q(c, "SELECT 1")[0][0]
            finally:
                c.close()
        except Exception as exc:  # what went wrong is the test's answer
            return repr(exc)

    with ThreadPoolExecutor(6) as ex:
        return list(ex.map(one, range(6)))


def settled(db: Db) -> dict[str, int]:
    """The pool's metrics once the clients are gone (give the proxy a moment to see it)."""
    deadline = time.monotonic() + 10
    while True:
        m = pool(db).metrics()
        if (m["backends_in_use"] == 0 and m["clients"] == 0) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def check_after(db: Db, *, tls: bool, multi: bool = False) -> None:
    assert six_clients(db, tls=tls, multi=multi) == [1] * 6
    m = settled(db)
    assert m["backends_in_use"] == 0 and m["clients"] == 0, m
    assert m["clients_waiting"] == 0, m


WAYS = ["eof", "rst", "quit"]


# (tls, run in the lane): the lane's run of a plain text; its first run, which Python
# makes beside a lane and whose backend would go to the lane; TLS, Python's alone.
PATHS = {"fast_lane": (False, True), "python_beside_the_lane": (False, False), "tls": (True, False)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", WAYS)
async def test_leaving_a_result(db: Db, how: str, path: str) -> None:
    tls, lane = PATHS[path]

    def run() -> None:
        leave_mid_result(db, how, tls=tls, lane=lane)
        check_after(db, tls=tls)

    await asyncio.to_thread(run)


@pytest.mark.parametrize("db", ["python"], indirect=True)
@pytest.mark.parametrize("how", WAYS)
async def test_leaving_a_result_with_the_python_relay(db: Db, how: str) -> None:
    def run() -> None:
        leave_mid_result(db, how, tls=False, lane=False)
        check_after(db, tls=False)

    await asyncio.to_thread(run)


@pytest.mark.parametrize("db", ["auto", "python"], indirect=True)
async def test_leaving_in_the_second_result_of_a_multi_statement_query(db: Db) -> None:
    lane = db.platform.settings.proxy_relay != "python"

    def run() -> None:
        leave_mid_result(db, "eof", tls=False, sql=MULTI, lane=lane)
        check_after(db, tls=False, multi=True)
        leave_mid_result(db, "rst", tls=True, sql=MULTI, lane=False)
        check_after(db, tls=True, multi=True)

    await asyncio.to_thread(run)


async def test_leaving_a_result_with_the_other_core_busy(db: Db) -> None:
    """The reproducer while a process spins on the other core (the proxy, the compute and
    the clients share one)."""

    def run() -> None:
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            leave_mid_result(db, "eof", tls=False, lane=False)
            check_after(db, tls=False)
            leave_mid_result(db, "eof", tls=False, lane=True)
            check_after(db, tls=False)
        finally:
            spin.kill()
            spin.wait()

    await asyncio.to_thread(run)
