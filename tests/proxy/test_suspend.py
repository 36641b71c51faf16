"""The suspend scheduler with real computes behind the real proxy."""

from __future__ import annotations

import asyncio
import threading
import time

import MySQLdb
import pytest

from tests.proxy.conftest import Db
from tests.proxy.test_clients import mysqldb_conn, pymysql_conn

pytestmark = pytest.mark.timeout(120)


async def with_timeout(db: Db, seconds: int) -> None:
    await db.update_endpoint({"suspend_timeout_seconds": seconds})


async def wait_state(db: Db, state: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if db.state() == state:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"endpoint still {db.state()} after {timeout}s, wanted {state}")


async def test_idle_endpoint_is_suspended_soon_after_its_timeout(db: Db) -> None:
    db.platform.lifecycle.warm_seconds = 0  # cold: its compute stops (warm: test_warm_suspend)
    await with_timeout(db, 1)

    def work() -> float:
        conn = pymysql_conn(db, ssl_disabled=True)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        last = time.monotonic()
        conn.close()
        return last

    last = await asyncio.to_thread(work)
    suspended = await wait_state(db, "suspended", 10)
    # The timeout, plus the lag allowed for activity to reach the scheduler (2 s), plus a
    # tick: never earlier than the timeout.
    assert 1.0 <= suspended - last <= 4.5, suspended - last
    assert not (await db.platform.driver.inspect(db.endpoint_id)).running
    ep = db.platform.lifecycle.get(db.endpoint_id)
    assert ep.suspended_at is not None and ep.last_active is not None


async def test_not_suspended_while_a_transaction_is_open(db: Db) -> None:
    await with_timeout(db, 1)
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True, autocommit=False)

    def begin() -> None:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS t (i INT)")
            cur.execute("BEGIN")
            cur.execute("INSERT INTO t VALUES (1)")

    await asyncio.to_thread(begin)
    await asyncio.sleep(3)
    assert db.state() == "active"

    def commit() -> float:
        conn.commit()
        conn.close()
        return time.monotonic()

    done = await asyncio.to_thread(commit)
    suspended = await wait_state(db, "suspended", 10)
    assert suspended - done <= 4.5  # the timeout, the activity lag (2 s), a tick


async def test_not_suspended_while_a_query_runs(db: Db) -> None:
    await with_timeout(db, 1)

    def sleeper() -> float:
        conn = pymysql_conn(db, ssl_disabled=True)
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(3)")
            assert cur.fetchone() == (0,)  # not interrupted
        conn.close()
        return time.monotonic()

    finished = await asyncio.to_thread(sleeper)
    assert db.platform.scheduler.suspended == []
    suspended = await wait_state(db, "suspended", 10)
    assert suspended - finished <= 4.5


async def test_a_client_connecting_during_the_suspend_is_served(db: Db) -> None:
    await with_timeout(db, 1)
    results: list[object] = []

    def client() -> None:
        try:
            conn = pymysql_conn(db, ssl_disabled=True)
            with conn.cursor() as cur:
                cur.execute("SELECT 'served'")
                results.append(cur.fetchone()[0])
            conn.close()
        except Exception as exc:
            results.append(exc)

    threads: list[threading.Thread] = []

    def on_suspend(endpoint_id: str) -> None:
        t = threading.Thread(target=client)
        t.start()
        threads.append(t)

    db.platform.scheduler.on_suspend = on_suspend
    await asyncio.to_thread(client)  # wakes it; then it idles into a suspend
    starts = db.platform.start_metrics.start_counts[db.endpoint_id]
    deadline = time.monotonic() + 10
    while not threads and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert threads, "the scheduler never suspended"
    await asyncio.to_thread(threads[0].join, 30)
    assert results == ["served", "served"]
    assert db.platform.scheduler.suspended == [db.endpoint_id]
    assert db.platform.start_metrics.start_counts[db.endpoint_id] == starts + 1


# The relays a plain session takes: the compiled one, and the event loop's (TLS). The Python
# relay (where the extension is not built) decides the same way: tests/proxy/test_relays.py.
PATHS = ["c", "tls"]


def idle_session(db: Db, path: str, **kw: object) -> MySQLdb.Connection:
    """A session through ``path`` that ran a statement and idles (MySQLdb: it reports the
    proxy's farewell as it is, where PyMySQL turns any ERR out of sequence into 2013)."""
    tls: dict[str, object] = (
        {"ssl": {"ca": str(db.cert)}} if path == "tls" else {"ssl_mode": "DISABLED"}
    )
    conn = mysqldb_conn(db, read_timeout=20, **tls, **kw)
    conn.query("SELECT 1")
    conn.store_result()
    return conn


def next_query_error(conn: MySQLdb.Connection) -> tuple[int, str]:
    with pytest.raises(MySQLdb.OperationalError) as err:
        conn.query("SELECT 2")
    code, message = err.value.args
    return code, message


@pytest.mark.parametrize("path", PATHS)
async def test_an_idle_session_gets_a_clear_error_when_its_endpoint_suspends(
    db: Db, path: str
) -> None:
    db.platform.lifecycle.warm_seconds = 0  # a cold suspend ends sessions; a warm one keeps them
    await with_timeout(db, 1)
    conn = await asyncio.to_thread(idle_session, db, path)
    await wait_state(db, "suspended", 10)
    code, message = await asyncio.to_thread(next_query_error, conn)
    assert code == 1927, (code, message)
    assert "suspended" in message and "Reconnect" in message


@pytest.mark.parametrize("path", PATHS)
async def test_a_session_its_server_ends_is_closed_as_the_server_closes_it(
    db: Db, path: str
) -> None:
    """Issue 34: a session ended by its own wait_timeout while the compute runs on got the
    proxy's "its compute was suspended or stopped"; drivers expect the server's plain close
    (2013), and reconnect as they do with the server itself."""
    conn = await asyncio.to_thread(idle_session, db, path, init_command="SET wait_timeout=1")
    await asyncio.sleep(2.5)
    code, message = await asyncio.to_thread(next_query_error, conn)
    assert code in (2006, 2013) and "suspended" not in message, (code, message)
    assert db.state() == "active"
    again = await asyncio.to_thread(idle_session, db, path)  # the compute serves on
    again.close()


async def test_a_session_busy_every_half_second_is_never_cut(db: Db) -> None:
    """At the smallest timeout (1 s), a session running a statement every 0.5 s keeps its
    endpoint up for as long as it runs (activity reaches the scheduler once a second)."""
    await with_timeout(db, 1)

    def work() -> int:
        conn = pymysql_conn(db, ssl_disabled=True)
        done = 0
        try:
            with conn.cursor() as cur:
                end = time.monotonic() + 5  # five times the timeout
                while time.monotonic() < end:
                    cur.execute("SELECT 1")
                    done += 1
                    time.sleep(0.5)
        finally:
            conn.close()
        return done

    assert await asyncio.to_thread(work) >= 8
    assert db.platform.start_metrics.suspend_counts.get(db.endpoint_id, 0) == 0
    await wait_state(db, "suspended", 10)
