"""A compute that dies while clients are held for its wake (issue 30, item 2): the wake is
tried again, and every held client is served by the retry; none sees the death. Forty
clients each round, the compute SIGKILLed as soon as its process appears (mid-start), six
rounds, a process spinning on the other core."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pymysql
import pytest

from tests.helpers import mariadbd_processes
from tests.proxy.conftest import Db
from tests.proxy.pooler.test_lane_input_limit import other_core_busy
from tests.proxy.test_clients import pymysql_conn

pytestmark = pytest.mark.timeout(300)

CLIENTS = 40
ROUNDS = 6


def kill_when_it_appears(db: Db, seconds: float = 20) -> int:
    """SIGKILL the endpoint's mariadbd as soon as it exists; its pid."""
    data_dir = db.platform.settings.data_dir
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pid = mariadbd_processes(data_dir).get(db.endpoint_id)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.002)
    raise AssertionError("the compute never started")


def held_clients(db: Db) -> tuple[int, list[object]]:
    served: list[int] = []
    errors: list[object] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            conn = pymysql_conn(db, ssl_disabled=True, read_timeout=60)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
            conn.close()
            with lock:
                served.append(1)
        except Exception as exc:
            with lock:
                errors.append(exc.args if isinstance(exc, pymysql.MySQLError) else repr(exc))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    killed = kill_when_it_appears(db)
    for t in threads:
        t.join(60)
    assert killed
    return len(served), errors


async def test_clients_held_for_a_wake_are_served_when_the_compute_dies_starting(
    db: Db,
) -> None:
    db.platform.lifecycle.warm_seconds = 0  # each round's wake is a cold start
    served, errors = 0, []
    with other_core_busy(True):
        for _ in range(ROUNDS):
            await db.platform.lifecycle.suspend(db.endpoint_id)
            n, errs = await asyncio.to_thread(held_clients, db)
            served += n
            errors += errs
    assert (served, errors) == (CLIENTS * ROUNDS, [])
