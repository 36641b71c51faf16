"""The id a session's greeting carries is the proxy's (sent before the compute is known),
not the compute's thread id. Drivers use it for `KILL`: it must never name another session
on the compute (issue 34, item 2: a proxy id of 5 was the thread id of some other session
of the same role). Proxy ids lie above every thread id a compute gives out."""

from __future__ import annotations

import asyncio
import threading

import pymysql
import pytest

from selkie.proxy.server import SESSION_ID_BASE, session_ids
from tests.proxy.conftest import Db
from tests.proxy.test_clients import pymysql_conn

pytestmark = pytest.mark.timeout(120)


def test_ids_stay_in_the_upper_half_and_wrap_there() -> None:
    ids = session_ids()
    first = [next(ids) for _ in range(1000)]
    assert all(SESSION_ID_BASE <= i < 2 * SESSION_ID_BASE for i in first)
    assert len(set(first)) == 1000


async def test_kill_with_the_greetings_id_never_reaches_another_session(db: Db) -> None:
    def run() -> tuple[int, list[object], int]:
        victim = pymysql_conn(db, ssl_disabled=True)
        killer = pymysql_conn(db, ssl_disabled=True)
        out: list[object] = []

        def sleep() -> None:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(1.5)")
                out.append(cur.fetchone())

        t = threading.Thread(target=sleep)
        t.start()
        try:
            with pytest.raises(pymysql.err.OperationalError) as err, killer.cursor() as cur:
                cur.execute(f"KILL QUERY {victim.thread_id()}")
            t.join(10)
            return victim.thread_id(), out, err.value.args[0]
        finally:
            victim.close()
            killer.close()

    greeting_id, out, code = await asyncio.to_thread(run)
    assert greeting_id >= SESSION_ID_BASE
    assert code == 1094  # Unknown thread id: the compute never gave that one out
    assert out == [(0,)]  # the sleep ran to its end: nothing was killed
