"""A running local compute changes size live: the startup boost, resizes up and down (cgroup
limits and the server's own buffer pool and threads), and a failed step undone. Real
mariadbd processes in real cgroups (root; under CI=true a missing cgroup hierarchy fails)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from selkie.compute.base import ComputeSpec
from selkie.compute.cgroups import Cgroups
from selkie.compute.local import LocalDriver
from selkie.compute.mariadb import GIB, MIB
from selkie.errors import ComputeError
from tests.conftest import need_service
from tests.platforms import require_mariadb

EP = "ep-live-size"


def cpu_limit(limits: dict[str, str]) -> str:
    value = limits.get("cpu.max") or limits.get("cpu.cfs_quota_us") or ""
    return value.split()[0]


def memory_limit(limits: dict[str, str]) -> int:
    return int(limits.get("memory.max") or limits.get("memory.limit_in_bytes") or 0)


@pytest.fixture
async def driver(tmp_path: Path, template_datadir: Path) -> AsyncIterator[LocalDriver]:
    require_mariadb()
    cgroups = Cgroups(enabled=True)
    if cgroups.mode == "off" or os.geteuid() != 0:
        need_service("writable cgroups", "live sizing needs root and a cgroup hierarchy")
    datadir = tmp_path / "datadir"
    shutil.copytree(template_datadir, datadir, symlinks=True)
    d = LocalDriver(data_dir=tmp_path / "data", cgroups=cgroups)
    spec = ComputeSpec(
        endpoint_id=EP, project_id="p", branch_id="b", cu=0.25, datadir=datadir, boost=True
    )
    await d.start(spec, timeout=60)
    try:
        yield d
    finally:
        await d.stop(EP, timeout=20)
        await d.close()


async def server(driver: LocalDriver) -> tuple[int, int, int]:
    (rows,) = await driver.execute(
        EP, ["SELECT @@innodb_buffer_pool_size, @@thread_pool_size, @@max_connections"]
    )
    pool, threads, connections = rows[0]
    return int(pool), int(threads), int(connections)


async def test_startup_boost_then_the_quota(driver: LocalDriver) -> None:
    limits = driver.cgroups.limits(EP)
    assert cpu_limit(limits) in ("max", "-1")  # started without a CPU limit
    assert memory_limit(limits) == GIB  # memory is limited from the start
    await driver.end_boost(EP)
    assert cpu_limit(driver.cgroups.limits(EP)) == "25000"
    await driver.end_boost(EP)  # idempotent
    assert cpu_limit(driver.cgroups.limits(EP)) == "25000"


async def test_resize_up_and_down_live(driver: LocalDriver) -> None:
    await driver.end_boost(EP)
    (before,) = await driver.execute(EP, ["SELECT CONNECTION_ID()"])
    await driver.resize(EP, 1.0)
    limits = driver.cgroups.limits(EP)
    assert cpu_limit(limits) == "100000"
    assert memory_limit(limits) == 4 * GIB
    assert await server(driver) == (2 * GIB, 1, 1000)
    load = await driver.load(EP)
    assert load is not None and load.cu == 1.0 and load.pool_pages_total > 0
    await driver.resize(EP, 2.0)
    assert await server(driver) == (4 * GIB, 2, 2000)
    await driver.resize(EP, 0.25)
    limits = driver.cgroups.limits(EP)
    assert cpu_limit(limits) == "25000"
    assert memory_limit(limits) == GIB
    assert await server(driver) == (512 * MIB, 1, 250)
    # The same server all along: no restart.
    (after,) = await driver.execute(EP, ["SELECT CONNECTION_ID()"])
    assert after[0][0] > before[0][0]
    info = await driver.inspect(EP)
    assert info.running


async def test_a_failed_step_leaves_the_old_size(
    driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    await driver.end_boost(EP)

    def refuse(endpoint_id: str, cu: float | None) -> None:
        raise OSError(16, "Device or resource busy")

    # Shrinking: the pool goes down first, then the limits; the limit write fails.
    await driver.resize(EP, 1.0)
    monkeypatch.setattr(driver.cgroups, "set_cpu", refuse)
    with pytest.raises(ComputeError, match=r"cannot set the limits of 0\.25 CU"):
        await driver.resize(EP, 0.25)
    assert await server(driver) == (2 * GIB, 1, 1000)  # the pool grew back
    assert memory_limit(driver.cgroups.limits(EP)) == 4 * GIB
    load = await driver.load(EP)
    assert load is not None and load.cu == 1.0
    # Growing: the limits go first; nothing reaches the server.
    with pytest.raises(ComputeError):
        await driver.resize(EP, 2.0)
    assert await server(driver) == (2 * GIB, 1, 1000)
    monkeypatch.undo()
    await driver.resize(EP, 2.0)
    assert await server(driver) == (4 * GIB, 2, 2000)
