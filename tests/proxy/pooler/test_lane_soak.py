"""The fast lane under a crowd (security review: `sysbench --threads=200` through the pooler
never finished — every backend counted in use, none driven, clients stalled for good). Two
hundred clients share twenty backends while a process spins on the other core: half run
server-side prepared statements (mysql-connector), half plain texts and short transactions
(PyMySQL) — two kinds of client (their capabilities differ), so a backend freed for one
kind must reach the other's waiters too. Every client must finish, every answer be right, and afterwards the lane holds
no backend that no session drives. The clients run in a child process, so that they do not
compete with the proxy (which runs in this one) for the interpreter's lock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.proxy.conftest import Db
from tests.proxy.pooler.test_lane import lane_db
from tests.proxy.pooler.test_lane_input_limit import other_core_busy
from tests.proxy.pooler.test_pool import pool

pytestmark = pytest.mark.timeout(300)

CLIENTS = 200
BACKENDS = 20
ROUNDS = 15
FINISH_WITHIN = 180  # seconds: a stall, not a speed limit (about 5 s here)

CROWD = r"""
import json, sys, threading
import mysql.connector, pymysql

port, user, password, database, clients, rounds = json.loads(sys.argv[1])
errors, done = [], []
start = threading.Barrier(clients)


def prepared(i):
    c = mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=password,
        database=database, use_pure=True, ssl_disabled=True, autocommit=True,
        connection_timeout=60)
    cur = c.cursor(prepared=True)
    start.wait()
    for r in range(rounds):
        cur.execute("SELECT ? + ?", (i, r))
        assert cur.fetchall() == [(i + r,)], (i, r)
    c.close()


def plain(i):
    c = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password,
        database=database, autocommit=True, read_timeout=60, write_timeout=60)
    start.wait()
    with c.cursor() as cur:
        for r in range(rounds):
            if r % 5 == 4:
                cur.execute("BEGIN")
                cur.execute("SELECT 1")
                cur.execute("COMMIT")
            cur.execute("SELECT 7 * 6")
            assert cur.fetchall() == ((42,),)
    c.close()


def client(i):
    try:
        (prepared if i % 2 else plain)(i)
        done.append(i)
    except BaseException as e:
        errors.append(f"client {i}: {type(e).__name__}: {e}")
        try:
            start.abort()
        except Exception:
            pass


threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"done": len(done), "errors": errors[:10]}))
"""


@pytest.fixture
async def db(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Db]:
    # A client may wait a long time for one of twenty backends under this crowd.
    async with lane_db(tmp_path, template_datadir, cap=BACKENDS, wait=120) as db:
        yield db


async def test_two_hundred_clients_over_twenty_backends_all_finish(db: Db) -> None:
    args = [db.port, f"{db.endpoint_id}-pooler.{db.role}", db.password, db.database]
    with other_core_busy(True):
        crowd = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CROWD,
            json.dumps([*args, CLIENTS, ROUNDS]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(crowd.communicate(), FINISH_WITHIN)
        except TimeoutError:
            crowd.kill()
            await crowd.wait()
            lane = pool(db).lane
            stray = lane.stray() if lane else None
            raise AssertionError(f"the crowd stalled: {pool(db).metrics()}; {stray}") from None
    assert crowd.returncode == 0, err.decode()[-2000:]
    lane = pool(db).lane
    assert lane is not None
    result = json.loads(out)
    assert result == {"done": CLIENTS, "errors": []}
    assert lane.c.commands > 0  # the lane ran commands, not only Python
    assert lane.stray() == []
    for _ in range(100):
        if pool(db).metrics()["backends_in_use"] == 0:
            break
        await asyncio.sleep(0.05)
    assert pool(db).metrics()["backends_in_use"] == 0
    assert lane.stray() == []
