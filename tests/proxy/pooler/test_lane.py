"""The pooler's fast lane with real clients and a real compute: plain commands run there
(counted), what they leave (LAST_INSERT_ID, warnings, a transaction) is noted as the Python
pooler notes it, a parked session waiting for a backend gets the pool's timeout error, and
with ``proxy_relay = python`` there is no lane and the same statements run in Python."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from selkie.config import load_settings
from selkie.platform import Platform
from selkie.proxy.pooler import lane
from tests.helpers import free_port, seed_template
from tests.platforms import require_mariadb
from tests.proxy.conftest import Db
from tests.proxy.pooler.test_pool import conn, connector_conn, pool, pooled_db, q

pytestmark = pytest.mark.timeout(300)


def require_lane() -> None:
    if not lane.available():
        if os.environ.get("CI") == "true":
            raise RuntimeError("the pooler's fast lane (_lane.c) is not built")
        pytest.skip("the fast lane is not built here")


async def platform(
    tmp_path: Path, template: Path, *, cap: int, wait: float, relay: str
) -> Platform:
    require_mariadb()
    seed_template(template, tmp_path / "data")  # a copy, not a mariadb-install-db per test
    p = Platform.open(
        load_settings(
            environ={
                "SELKIE_DATA_DIR": str(tmp_path / "data"),
                "SELKIE_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
                "SELKIE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
                "SELKIE_POOLER_MAX_BACKENDS": str(cap),
                "SELKIE_POOLER_WAIT_TIMEOUT": str(wait),
                "SELKIE_PROXY_RELAY": relay,
            }
        )
    )
    await p.start(proxy=True)
    return p


@asynccontextmanager
async def lane_db(
    tmp_path: Path, template: Path, *, cap: int, wait: float, relay: str = "auto"
) -> AsyncIterator[Db]:
    """A pooled project on a platform of its own (``platform``), stopped after."""
    if relay != "python":
        require_lane()
    p = await platform(tmp_path, template, cap=cap, wait=wait, relay=relay)
    try:
        yield await pooled_db(p)
    finally:
        await p.stop()
        p.close()


@pytest.fixture
async def db(
    tmp_path: Path, template_datadir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Db]:
    marker = request.node.get_closest_marker("backends")
    cap = marker.args[0] if marker else 1
    relay = getattr(request, "param", "auto")
    async with lane_db(tmp_path, template_datadir, cap=cap, wait=1, relay=relay) as db:
        yield db
        assert_lane_sound(db)


def assert_lane_sound(db: Db) -> None:
    """The lane's invariant: a backend it counts in use has a session reading or writing
    it (its answer on the way, or a transaction or session mode keeping it)."""
    assert db.platform.proxy is not None
    pooled = db.platform.proxy.pools.get(db.endpoint_id)
    if pooled is not None and pooled.lane is not None:
        assert pooled.lane.stray() == []


def lane_commands(db: Db) -> int:
    return pool(db).metrics()["fast_lane_commands"]


@pytest.mark.parametrize("db", ["auto", "python"], indirect=True)
async def test_plain_commands_run_in_the_lane_and_their_outcome_is_noted(db: Db) -> None:
    def run() -> dict[str, object]:
        setup = conn(db)
        q(setup, "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        a, b = conn(db), conn(db)
        ids = []
        for _ in range(5):
            # The same texts each time: plain, so the lane runs them from the second on;
            # another client's insert in between, and each reads its own LAST_INSERT_ID.
            q(a, "INSERT INTO t (v) VALUES (7)")
            q(b, "INSERT INTO t (v) VALUES (100)")
            ids.append(q(a, "SELECT LAST_INSERT_ID()")[0][0])
        # A warning left by a statement the lane runs, read by SHOW WARNINGS: it pins the
        # session to that backend until read.
        warn = "SELECT CAST('-1x' AS UNSIGNED)"
        q(a, warn)
        q(a, "SELECT 1")  # reads nothing: the first warning's pin goes
        q(a, warn)
        warnings = q(a, "SHOW WARNINGS")
        # Prepared statements (types sent with every execute, as this driver does).
        ps = connector_conn(db, db.database)
        cur = ps.cursor(prepared=True)
        values = []
        for i in ids:
            cur.execute("SELECT v FROM t WHERE id = ?", (i,))
            values.append(cur.fetchall()[0][0])
        ps.close()
        # A transaction keeps its backend until it ends.
        for _ in range(2):
            q(b, "BEGIN")
            q(b, "UPDATE t SET v = v + 1 WHERE v >= 100")
            in_tx = pool(db).in_use
            q(b, "COMMIT")
        counts = q(b, "SELECT COUNT(*), SUM(v) FROM t")[0]
        for c in (a, b, setup):
            c.close()
        return {
            "ids": ids,
            "values": values,
            "warnings": warnings,
            "in_tx": in_tx,
            "counts": counts,
        }

    out = await asyncio.to_thread(run)
    assert out["ids"] == [1, 3, 5, 7, 9] and out["values"] == [7] * 5
    assert out["warnings"][0][1] == 1292  # type: ignore[index]
    assert out["in_tx"] == 1 and tuple(out["counts"]) == (10, 5 * 7 + 5 * 102)  # type: ignore[arg-type]
    ran = lane_commands(db)
    if db.platform.settings.proxy_relay == "python":
        assert pool(db).lane is None and ran == 0
    else:
        # Inserts (4 + 4), the warning, 4 of the executes, BEGIN, UPDATE, COMMIT.
        assert ran >= 15, ran
    assert pool(db).metrics()["backends_peak"] == 1


async def test_a_parked_session_waiting_for_a_backend_gets_the_timeout_error(db: Db) -> None:
    def run() -> tuple[float, int, int]:
        a, b = conn(db), conn(db)
        for _ in range(2):
            q(b, "SELECT 1")  # plain: parked sessions run it in the lane
        q(a, "BEGIN")  # holds the one backend
        t0 = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as err:
            q(b, "SELECT 1")
        waited = time.monotonic() - t0
        q(a, "COMMIT")
        after = q(b, "SELECT 1")[0][0]
        a.close()
        b.close()
        return waited, err.value.args[0], after

    waited, code, after = await asyncio.to_thread(run)
    assert code == 1040 and 0.9 <= waited < 5 and after == 1
    assert pool(db).metrics()["clients_waiting"] == 0


async def test_a_session_parked_in_a_transaction_loses_it_with_the_compute(db: Db) -> None:
    def run() -> tuple[pymysql.Connection, int]:
        a = conn(db)
        q(a, "BEGIN")
        q(a, "BEGIN")  # the second time from the lane: the session is parked with its backend
        return a, pool(db).in_use

    a, in_use = await asyncio.to_thread(run)
    assert in_use == 1
    await db.platform.lifecycle.suspend(db.endpoint_id)
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(q, a, "SELECT 1")
    assert err.value.args[0] in (1927, 2013)
    b = await asyncio.to_thread(conn, db)  # the endpoint wakes for the next client
    assert (await asyncio.to_thread(q, b, "SELECT 1"))[0][0] == 1
    await asyncio.to_thread(b.close)


async def test_large_results_multi_statements_and_a_slow_reader_pass_whole(db: Db) -> None:
    def run() -> list[object]:
        c = conn(db, client_flag=CLIENT.MULTI_STATEMENTS)
        out: list[object] = []
        for _ in range(2):  # the second time from the lane
            big = q(c, "SELECT REPEAT('x', 20000000), 1")[0]
            out.append((hashlib.sha256(big[0].encode()).hexdigest()[:12], big[1]))
            with c.cursor() as cur:
                cur.execute("SELECT 1; SELECT 2, 3; SELECT 'z'")
                sets = [cur.fetchall()]
                while cur.nextset():
                    sets.append(cur.fetchall())
            out.append(sets)
            # Read slower than the compute answers: the lane holds the backend's bytes back.
            with c.cursor(pymysql.cursors.SSCursor) as sc:
                sc.execute("SELECT seq, REPEAT('y', 1000) FROM seq_1_to_20000")
                n = 0
                for _row in sc:
                    n += 1
                    if n % 5000 == 0:
                        time.sleep(0.1)
            out.append(n)
        c.close()
        return out

    first, sets, n, *again = await asyncio.to_thread(run)
    assert first == (hashlib.sha256(b"x" * 20000000).hexdigest()[:12], 1)
    assert sets == [((1,),), ((2, 3),), (("z",),)] and n == 20000
    assert again == [first, sets, n]
    assert lane_commands(db) >= 3


@pytest.mark.backends(2)
async def test_a_queued_session_handed_a_backend_without_its_statement_runs_it(db: Db) -> None:
    """Issue 26: a session queued in the lane for a backend, handed one that lacks its
    prepared statement, was left there — neither run nor handed back — with that backend
    counted in use for good. Python now prepares it there and runs the command."""
    waiter, a, b = [await asyncio.to_thread(connector_conn, db, db.database, 10) for _ in range(3)]
    lane_ = pool(db).lane
    assert lane_ is not None

    # Prepared once, executed again from then on (made in a thread: it pings the proxy).
    cur = await asyncio.to_thread(waiter.cursor, prepared=True)

    def execute(c: mysql.connector.MySQLConnection) -> list[object]:
        cur.execute("SELECT 40 + 2")
        return list(cur.fetchall())

    def run(c: mysql.connector.MySQLConnection, sql: str) -> None:
        cur = c.cursor()
        cur.execute(sql)
        cur.close()

    # Prepared on the first backend, run twice (the second time by the lane).
    assert await asyncio.to_thread(execute, waiter) == [(42,)]
    assert await asyncio.to_thread(execute, waiter) == [(42,)]
    await asyncio.to_thread(run, a, "BEGIN")  # the first backend
    await asyncio.to_thread(run, b, "BEGIN")  # a second one, without the statement
    assert pool(db).in_use == 2
    queued = asyncio.create_task(asyncio.to_thread(execute, waiter))
    deadline = time.monotonic() + 10
    while lane_.c.waiting == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert lane_.c.waiting == 1  # queued in the lane
    await asyncio.to_thread(run, b, "COMMIT")  # its backend goes to the waiter
    assert lane_.stray() == []
    assert await asyncio.wait_for(queued, 15) == [(42,)]
    await asyncio.to_thread(run, a, "COMMIT")
    assert lane_.stray() == []
    for c in (waiter, a, b):
        await asyncio.to_thread(c.close)
    deadline = time.monotonic() + 5
    while pool(db).in_use and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pool(db).metrics()["backends_in_use"] == 0
