"""Transfer, written data, storage and quotas, metered on real computes behind the real proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from selkie.api.app import create_app
from selkie.control.bootstrap import local_principal
from selkie.metering.usage import PeriodUsage, month_usage, storage_bytes
from selkie.platform import Platform
from selkie.store.tables import MeterMarkRow
from tests.platforms import open_platform
from tests.proxy.conftest import Db, db
from tests.proxy.test_clients import pymysql_conn

pytestmark = pytest.mark.timeout(120)
__all__ = ["db"]


@pytest.fixture
async def platform(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    async with open_platform(tmp_path, template_datadir, proxy=True, metering_interval="0.3") as p:
        yield p


def usage(db: Db) -> PeriodUsage:
    return month_usage(db.platform.store, db.created.project.id, datetime.now(UTC))


async def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    t0 = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_transfer_written_and_storage_are_metered(db: Db) -> None:
    payload = 2 * 2**20

    def work() -> int:
        conn = pymysql_conn(db, ssl_disabled=True)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB)")
            for i in range(4):
                cur.execute("INSERT INTO blobs VALUES (%s, REPEAT('x', %s))", (i, payload // 4))
            cur.execute("SELECT b FROM blobs")
            got = sum(len(r[0]) for r in cur.fetchall())
        conn.close()
        return got

    assert await asyncio.to_thread(work) == payload
    assert db.platform.proxy is not None
    stats = db.platform.proxy.stats[db.endpoint_id]
    # Every byte the proxy sent is stored once the session closes (within the report).
    # The proxy sees the client's close a moment after close() returns: wait for it
    # first, or 0 stored == 0 counted would pass before anything was counted.
    await eventually(lambda: stats.sessions == 0 and stats.bytes_to_clients > 0)
    await eventually(lambda: usage(db).data_transfer_bytes == stats.bytes_to_clients)
    assert payload < stats.bytes_to_clients < payload + 64 * 1024
    # Written data: the compute's redo log, read by the meter while it runs.
    await eventually(lambda: usage(db).written_data_bytes >= payload)
    await db.platform.lifecycle.suspend(db.endpoint_id)
    after_suspend = usage(db).written_data_bytes
    assert payload <= after_suspend < 10 * payload
    await asyncio.sleep(1)  # the meter keeps running: a suspended compute adds nothing
    assert usage(db).written_data_bytes == after_suspend
    assert usage(db).data_transfer_bytes == stats.bytes_to_clients

    # Storage: the branch's size now, and byte-hours that grow with time at that size.
    branch = db.created.branch.id
    size = await db.platform.storage.branch_size(branch)
    assert size is not None and size > payload
    await eventually(lambda: storage_bytes(db.platform.store, db.created.project.id) == size)
    first = usage(db).data_storage_bytes_hour
    t0 = time.monotonic()
    await asyncio.sleep(2)
    await eventually(lambda: usage(db).data_storage_bytes_hour > first)
    await asyncio.sleep(0.7)  # a sample or two later
    grown = usage(db).data_storage_bytes_hour - first
    elapsed = time.monotonic() - t0
    # size x elapsed hours, give or take one sampling interval (0.3 s) and some slack.
    assert size * (elapsed - 1.0) / 3600 <= grown <= size * (elapsed + 0.5) / 3600, (
        grown,
        size * elapsed / 3600,
    )


async def test_quotas_refuse_wakes_with_the_reason(db: Db) -> None:
    who = local_principal(db.platform.control)
    pid = db.created.project.id
    await asyncio.to_thread(
        db.platform.control.projects.update,
        who,
        pid,
        settings={"compute_time_limit_seconds": 1},
    )
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    # 0.25 CU: four seconds of running use the CU-second; the meter then suspends it.
    await eventually(lambda: db.endpoint_id in db.platform.quotas.suspended, timeout=20)
    await eventually(lambda: db.state() == "suspended")
    conn.close()
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    code, message = err.value.args
    assert code == 1226, err.value.args
    assert "used its compute time" in message and "compute_time_limit_seconds" in message
    assert not (await db.platform.driver.inspect(db.endpoint_id)).running

    _, key = await asyncio.to_thread(db.platform.control.api_keys.create, who, name="quota")
    api = TestClient(
        create_app(db.platform.control),
        headers={"Authorization": f"Bearer {key}"},
        raise_server_exceptions=False,
    )
    body = (await asyncio.to_thread(api.get, f"/v1/projects/{pid}/usage")).json()
    assert body["quota"]["compute_time_limit_seconds"] == 1
    (why,) = body["quota"]["exceeded"]
    assert "used its compute time" in why
    assert body["compute_time_seconds"] >= 1
    r = await asyncio.to_thread(api.post, f"/v1/projects/{pid}/endpoints/{db.endpoint_id}/start")
    assert r.status_code == 429 and "used its compute time" in r.json()["message"], r.text

    # Lifting the limit lets it wake again; a storage limit below its size stops it.
    await asyncio.to_thread(
        db.platform.control.projects.update,
        who,
        pid,
        settings={"compute_time_limit_seconds": None, "storage_limit_bytes": 1000},
    )
    await asyncio.sleep(1.1)  # the proxy's access cache
    await eventually(lambda: storage_bytes(db.platform.store, pid) > 1000)
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    assert err.value.args[0] == 1226 and "storage_limit_bytes" in err.value.args[1]
    await asyncio.to_thread(
        db.platform.control.projects.update, who, pid, settings={"storage_limit_bytes": None}
    )
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    await asyncio.to_thread(conn.close)
    start = datetime.now(UTC) - timedelta(minutes=5)
    rows = await asyncio.to_thread(
        db.platform.control.consumption.history,
        who,
        start=start,
        end=start + timedelta(minutes=10),
        granularity="hourly",
        project_ids=[pid],
    )
    assert sum(p.compute_time_seconds for _, periods in rows for p in periods) >= 1


async def test_a_suspend_takes_the_last_written_reading(
    tmp_path: Path, template_datadir: Path
) -> None:
    # The meter's own interval is an hour here: only the reading taken at suspend counts.
    async with open_platform(tmp_path, template_datadir, metering_interval="3600") as p:
        who = local_principal(p.control)
        created = await asyncio.to_thread(p.control.projects.create, who, name="written")
        ep, pid = created.endpoints[0].id, created.project.id
        await p.lifecycle.start(ep)
        await p.meter.tick(datetime.now(UTC))  # the one sample of the hour, before writing
        before = month_usage(p.store, pid, datetime.now(UTC)).written_data_bytes
        await p.driver.execute(
            ep,
            [
                "CREATE TABLE selkiedb.w (b LONGBLOB)",
                "INSERT INTO selkiedb.w VALUES (REPEAT('y', 3000000))",
            ],
        )
        assert month_usage(p.store, pid, datetime.now(UTC)).written_data_bytes == before
        await p.lifecycle.suspend(ep)
        written = month_usage(p.store, pid, datetime.now(UTC)).written_data_bytes - before
        assert 3_000_000 <= written < 30_000_000, written
        await p.lifecycle.start(ep)  # a new run: its counter starts again from zero
        await p.lifecycle.suspend(ep)
        again = month_usage(p.store, pid, datetime.now(UTC)).written_data_bytes - before
        assert written <= again < written + 1_000_000
        # The first run's mark is forgotten once an hour has passed; the current one stays.
        with p.store.read() as s:
            keys = [k for k in s.execute(select(MeterMarkRow.key)).scalars() if "written" in k]
        assert len(keys) == 2
        assert await asyncio.to_thread(p.meter._tidy, datetime.now(UTC) + timedelta(hours=2)) == 1
