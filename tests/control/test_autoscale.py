"""Autoscaling: the decision from readings (pure), and a real compute that grows under a
CPU-bound query and shrinks back when idle, its cgroup, buffer pool, endpoint, metrics,
operations and bill following."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
import pytest

from selkie.compute.base import ComputeLoad
from selkie.compute.cgroups import Cgroups
from selkie.compute.mariadb import GIB, MIB
from selkie.control.autoscaler import Want, decide, wanted
from selkie.control.bootstrap import local_principal
from selkie.model import OperationAction, OperationStatus
from selkie.platform import Platform
from selkie.store.tables import UsageEventRow
from tests.conftest import need_service
from tests.platforms import open_platform, platform_address


def load(cu: float, cpu: float, **kw: int) -> ComputeLoad:
    values = {
        "memory_bytes": 100 * MIB,
        "throttled_periods": 0,
        "pool_reads": 0,
        "pool_pages_data": 100,
        "pool_pages_total": 1000,
    }
    values.update(kw)
    return ComputeLoad(cu=cu, cpu_seconds=cpu, **values)  # type: ignore[arg-type]


def test_what_a_compute_wants() -> None:
    # At its quota (0.25 cores of 0.25 CU): twice its size.
    assert wanted(load(0.25, 0), load(0.25, 0.25), 1.0)[0] == 0.5
    # 0.5 cores at 1 CU: 0.5 / 0.9 rounded up to the grid.
    assert wanted(load(1, 0), load(1, 0.5), 1.0)[0] == 0.75
    # Idle: the smallest size.
    assert wanted(load(2, 10), load(2, 10.01), 1.0) == (0.25, "CPU 0.01 cores at 2 CU")
    # Memory besides the buffer pool (4 GiB at 2 CU): 3 GiB more wants 3 / 1.5 = 2 CU.
    assert wanted(load(2, 0), load(2, 0, memory_bytes=7 * GIB), 1.0)[0] == 2.0
    # A full pool still reading from disk: a bigger cache.
    full = {"pool_pages_data": 990, "pool_pages_total": 1000}
    size, why = wanted(load(1, 0, **full), load(1, 0, pool_reads=500, **full), 1.0)
    assert size == 2.0 and "buffer pool full" in why
    # Misses with room left in the pool are the cache warming up, not too small.
    assert wanted(load(1, 0), load(1, 0, pool_reads=500), 1.0)[0] == 0.25


def test_up_fast_down_slowly_within_the_limits() -> None:
    def run(wants: list[tuple[float, float]], current: float, now: float) -> object:
        return decide(
            [Want(at, cu, "why") for at, cu in wants],
            current=current,
            min_cu=0.25,
            max_cu=2,
            now=now,
            since=0,
            up_seconds=2,
            down_seconds=60,
        )

    assert run([(1, 1), (2, 0.5)], 0.25, 2) == (0.5, "why")  # sustained: the least asked
    assert run([(1, 1), (2, 0.25)], 0.25, 2) is None  # not sustained
    assert run([(1, 8), (2, 8)], 1, 2) == (2, "why")  # never above max
    assert run([(1, 8)], 0.25, 1) is None  # not long enough since the start
    quiet = [(t, 0.25) for t in range(1, 61)]
    assert run(quiet[:30], 2, 30) is None  # down waits for the whole window
    assert run(quiet, 2, 60) == (0.25, "why for 60 s")
    assert run([*quiet[:-1], (60, 1)], 2, 60) == (1, "why for 60 s")  # the most asked lately
    # An ending load early in the window does not hold the size up for another window.
    assert run([(1, 1.5), *quiet[1:]], 2, 60) == (0.25, "why for 60 s")
    assert run([], 4, 0) == (2, "outside the endpoint's limits")


@pytest.fixture
async def scaling(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    if Cgroups(enabled=True).mode == "off" or os.geteuid() != 0:
        need_service("writable cgroups", "autoscaling a compute needs root and cgroups")
    async with open_platform(
        tmp_path,
        template_datadir,
        autoscale_interval="0.5",
        autoscale_up_seconds="1",
        autoscale_down_seconds="4",
    ) as p:
        yield p


def burn(port: int, user: str, password: str, stop: threading.Event) -> None:
    """A CPU-bound query on one connection until ``stop``."""
    conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password)
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT BENCHMARK(2000000, SHA2('selkie', 256))")
    finally:
        conn.close()


async def wait_for(predicate, seconds: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_a_compute_grows_under_load_and_shrinks_when_idle(scaling: Platform) -> None:
    platform = scaling
    who = local_principal(platform.control)
    created = await asyncio.to_thread(
        platform.control.projects.create,
        who,
        name="scaling",
        default_endpoint_settings={"autoscaling_limit_min_cu": 0.25, "autoscaling_limit_max_cu": 1},
    )
    ep, role = created.endpoints[0].id, created.roles[0]
    started = await platform.lifecycle.start(ep)
    assert started is not None and started.current_cu == 0.25
    cgroups = platform.driver.cgroups  # type: ignore[attr-defined]

    def cpu_quota() -> str:
        limits = cgroups.limits(ep)
        return (limits.get("cpu.max") or limits["cpu.cfs_quota_us"]).split()[0]

    async def pool() -> int:
        (rows,) = await platform.driver.execute(
            ep, ["SHOW VARIABLES LIKE 'innodb_buffer_pool_size'"]
        )
        return int(rows[0][1])

    assert cpu_quota() == "25000" and await pool() == 512 * MIB
    port = int(platform_address(platform, ep).rsplit(":", 1)[1])
    stop = threading.Event()
    burner = asyncio.create_task(
        asyncio.to_thread(burn, port, role.name, role.password or "", stop)
    )
    try:

        async def grown() -> bool:
            return platform.lifecycle.get(ep).current_cu == 1.0

        await wait_for(grown, 60)
        assert cpu_quota() == "100000"
        assert await pool() == 2 * GIB
        assert f'selkie_endpoint_cu{{endpoint_id="{ep}"' in platform.prometheus().decode()
    finally:
        stop.set()
        await burner

    async def shrunk() -> bool:
        return platform.lifecycle.get(ep).current_cu == 0.25

    await wait_for(shrunk, 60)
    assert cpu_quota() == "25000"
    assert await pool() == 512 * MIB

    ops = await asyncio.to_thread(
        platform.control.operations.list, who, created.project.id, limit=100, cursor=None
    )
    scaled = [op for op in ops.items if op.action is OperationAction.AUTOSCALE]
    assert scaled and all(op.status is OperationStatus.FINISHED for op in scaled)
    scaled.sort(key=lambda op: op.created_at)
    steps = [(op.payload["from_cu"], op.payload["to_cu"]) for op in scaled]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(steps)), steps
    assert steps[0][0] == 0.25 and steps[-1][1] == 0.25
    assert max(to for _, to in steps) == 1.0
    assert all("CPU" in op.payload["reason"] for op in scaled)

    # The bill integrates the sizes: each stretch at the size it ran at.
    await platform.lifecycle.suspend(ep)
    with platform.store.read() as s:
        events = list(
            s.query(UsageEventRow)
            .filter(UsageEventRow.endpoint_id == ep)
            .order_by(UsageEventRow.id)
        )
    assert [e.kind for e in events] == ["start"] + ["resize"] * len(steps) + ["stop"]
    expected = sum((b.at - a.at).total_seconds() * a.cu for a, b in itertools.pairwise(events))
    rows = await asyncio.to_thread(
        platform.control.consumption.history,
        who,
        start=events[0].at - timedelta(seconds=1),
        end=datetime.now(UTC) + timedelta(seconds=1),
        granularity="daily",
        project_ids=[created.project.id],
    )
    ((_, periods),) = rows
    billed = sum(p.compute_time_seconds for p in periods)
    assert abs(billed - expected) < 0.01, (billed, expected)
    active = sum(p.active_time_seconds for p in periods)
    assert 0.25 * active < billed < 1.0 * active
