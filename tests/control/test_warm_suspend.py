"""Warm suspend with real computes in real cgroups behind the real proxy: an idle endpoint
is frozen (no CPU), wakes through the proxy with its data and its idle sessions, goes cold
after the warm timeout and under the memory budget (least recently active first), and
nothing stays frozen after a kill -9 of `selkie up`. Needs root and a cgroup freezer (under
CI=true a missing one fails)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pymysql
import pytest

from selkie.compute.cgroups import Cgroups
from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.model import EndpointState, SuspendTier
from selkie.platform import Platform
from tests.conftest import need_service
from tests.helpers import api_client, mariadbd_processes, selkie_env, selkie_up
from tests.platforms import open_platform

pytestmark = pytest.mark.timeout(180)


def need_freezer() -> Cgroups:
    cgroups = Cgroups(enabled=True)
    if os.geteuid() != 0 or not cgroups.can_freeze:
        need_service("a cgroup freezer", "warm suspend needs root and a freezer hierarchy")
    return cgroups


@pytest.fixture
async def platform(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    need_freezer()
    async with open_platform(tmp_path, template_datadir, proxy=True) as p:
        yield p


async def project(platform: Platform, name: str, *, timeout: int = 1) -> Created:
    who = local_principal(platform.control)
    created = await asyncio.to_thread(platform.control.projects.create, who, name=name)
    await platform.runner.wait_idle()
    await asyncio.to_thread(
        platform.control.endpoints.update,
        who,
        created.project.id,
        created.endpoints[0].id,
        {"suspend_timeout_seconds": timeout},
    )
    return created


def connect(platform: Platform, created: Created) -> pymysql.Connection:  # type: ignore[type-arg]
    assert platform.proxy is not None and created.roles[0].password
    return pymysql.connect(
        host="127.0.0.1",
        port=platform.proxy.port,
        user=f"{created.endpoints[0].id}.{created.roles[0].name}",
        password=created.roles[0].password,
        database=created.databases[0].name,
        autocommit=True,
        ssl_disabled=True,
        connect_timeout=30,
        read_timeout=30,
    )


def query(conn: pymysql.Connection, sql: str) -> list[tuple[object, ...]]:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


async def wait_for(platform: Platform, endpoint_id: str, tier: SuspendTier, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ep = platform.lifecycle.get(endpoint_id)
        if ep.current_state is EndpointState.SUSPENDED and ep.suspend_tier is tier:
            return
        await asyncio.sleep(0.05)
    ep = platform.lifecycle.get(endpoint_id)
    raise AssertionError(f"{endpoint_id} is {ep.current_state}/{ep.suspend_tier}, wanted {tier}")


async def wait_active(platform: Platform, endpoint_id: str) -> None:
    for _ in range(200):
        if platform.lifecycle.get(endpoint_id).current_state is EndpointState.ACTIVE:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{endpoint_id} is {platform.lifecycle.get(endpoint_id).current_state}")


def cpu_ns(endpoint_id: str) -> int:
    path = Path("/sys/fs/cgroup/cpuacct") / "selkie" / endpoint_id / "cpuacct.usage"
    if not path.exists():  # v2
        stat = (Path("/sys/fs/cgroup") / "selkie" / endpoint_id / "cpu.stat").read_text()
        return int(stat.split()[1]) * 1000
    return int(path.read_text())


async def test_warm_endpoint_uses_no_cpu_and_wakes_with_its_data_and_sessions(
    platform: Platform,
) -> None:
    created = await project(platform, "warm")
    ep = created.endpoints[0].id
    idle = await asyncio.to_thread(connect, platform, created)
    await asyncio.to_thread(query, idle, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
    await asyncio.to_thread(query, idle, "INSERT INTO t VALUES (1, 'kept')")
    (pid,) = [(await platform.driver.inspect(ep)).pid]
    rss_active = platform.driver.memory(ep)

    await wait_for(platform, ep, SuspendTier.WARM, 15)
    assert platform.driver.cgroups.is_frozen(ep)  # type: ignore[attr-defined]
    assert (await platform.driver.inspect(ep)).pid == pid  # the same server, frozen
    rss_warm = platform.driver.memory(ep)
    assert rss_active and rss_warm and rss_warm < rss_active, (rss_active, rss_warm)
    before = cpu_ns(ep)
    await asyncio.sleep(5)
    assert cpu_ns(ep) == before  # no CPU at all while frozen
    # Not billed while frozen: the usage interval closed at the suspend.
    assert platform.lifecycle.get(ep).current_cu is None

    # The session opened before the freeze runs its next statement: the compute thaws.
    t0 = time.monotonic()
    rows = await asyncio.to_thread(query, idle, "SELECT v FROM t")
    assert rows == [("kept",)]
    assert time.monotonic() - t0 < 2.0
    # The server answers as soon as it is thawed; the store says active right after.
    await wait_active(platform, ep)
    assert not platform.driver.cgroups.is_frozen(ep)  # type: ignore[attr-defined]
    assert (await platform.driver.inspect(ep)).pid == pid  # thawed, not restarted

    # Frozen again; a new connection through the proxy wakes it (the proxy's wake thaws).
    await wait_for(platform, ep, SuspendTier.WARM, 15)
    t0 = time.monotonic()
    fresh = await asyncio.to_thread(connect, platform, created)
    assert await asyncio.to_thread(query, fresh, "SELECT COUNT(*) FROM t") == [(1,)]
    assert time.monotonic() - t0 < 1.0
    assert (await platform.driver.inspect(ep)).pid == pid
    assert await asyncio.to_thread(query, idle, "SELECT id FROM t") == [(1,)]
    fresh.close()
    idle.close()


async def noted_cooled(platform: Platform) -> None:
    """The store says cold a moment before the scheduler's cool() returns and notes it."""
    for _ in range(250):
        if platform.scheduler.cooled:
            return
        await asyncio.sleep(0.02)


async def test_warm_goes_cold_after_its_timeout(platform: Platform) -> None:
    platform.lifecycle.warm_seconds = 1.5
    created = await project(platform, "cools")
    ep = created.endpoints[0].id
    conn = await asyncio.to_thread(connect, platform, created)
    await asyncio.to_thread(query, conn, "CREATE TABLE t (id INT)")
    await asyncio.to_thread(query, conn, "INSERT INTO t VALUES (7)")
    conn.close()
    await wait_for(platform, ep, SuspendTier.WARM, 15)
    await wait_for(platform, ep, SuspendTier.COLD, 10)
    assert not (await platform.driver.inspect(ep)).running
    await noted_cooled(platform)
    assert platform.scheduler.cooled == [ep]
    # A cold one starts as before.
    conn = await asyncio.to_thread(connect, platform, created)
    assert await asyncio.to_thread(query, conn, "SELECT id FROM t") == [(7,)]
    conn.close()


async def test_memory_budget_stops_the_least_recently_active_first(platform: Platform) -> None:
    older = await project(platform, "older")
    newer = await project(platform, "newer")
    for created in (older, newer):
        conn = await asyncio.to_thread(connect, platform, created)
        await asyncio.to_thread(query, conn, "SELECT 1")
        conn.close()
        await asyncio.sleep(0.3)  # newer is active after older
    a, b = older.endpoints[0].id, newer.endpoints[0].id
    await wait_for(platform, a, SuspendTier.WARM, 15)
    await wait_for(platform, b, SuspendTier.WARM, 15)
    held = [platform.driver.memory(a) or 0, platform.driver.memory(b) or 0]
    assert all(held)
    # Room for one of them only.
    platform.lifecycle.warm_memory = max(held) + 1
    await wait_for(platform, a, SuspendTier.COLD, 10)
    await noted_cooled(platform)
    assert platform.lifecycle.get(b).suspend_tier is SuspendTier.WARM
    assert platform.driver.is_frozen(b)
    assert platform.scheduler.cooled == [a]


async def test_warm_off_suspends_cold(platform: Platform) -> None:
    platform.lifecycle.warm_seconds = 0
    created = await project(platform, "cold")
    ep = created.endpoints[0].id
    conn = await asyncio.to_thread(connect, platform, created)
    await asyncio.to_thread(query, conn, "SELECT 1")
    conn.close()
    await wait_for(platform, ep, SuspendTier.COLD, 15)
    assert not (await platform.driver.inspect(ep)).running


def test_kill_9_of_selkie_up_leaves_nothing_frozen(tmp_path: Path, template_datadir: Path) -> None:
    cgroups = need_freezer()
    env = selkie_env(tmp_path, template_datadir)
    log = tmp_path / "up.log"
    data_dir = Path(env["SELKIE_DATA_DIR"])
    with selkie_up(env, log) as proc:
        api = api_client(env, log)
        created = api.post("/v1/projects", json={"project": {"name": "crash"}}).json()
        pid, ep = created["project"]["id"], created["endpoints"][0]["id"]
        url = f"/v1/projects/{pid}/endpoints/{ep}"
        api.patch(url, json={"endpoint": {"suspend_timeout_seconds": 1}})
        api.post(f"{url}/start")
        deadline = time.monotonic() + 60
        while api.get(url).json()["endpoint"].get("suspend_tier") != "warm":
            assert time.monotonic() < deadline, api.get(url).json()
            time.sleep(0.1)
        assert cgroups.is_frozen(ep)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert ep in mariadbd_processes(data_dir)
        assert cgroups.is_frozen(ep)  # left frozen, with nobody watching it

    with selkie_up(env, log):
        endpoint = api.get(url).json()["endpoint"]
        assert endpoint["current_state"] == "suspended"
        assert endpoint["suspend_tier"] == "cold"
        assert not cgroups.is_frozen(ep)
        assert ep not in mariadbd_processes(data_dir)
        assert ep not in cgroups.frozen_groups()
        # And it wakes (cold) as usual.
        api.post(f"{url}/start")
        deadline = time.monotonic() + 60
        while api.get(url).json()["endpoint"]["current_state"] != "active":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert mariadbd_processes(data_dir) == {}
