"""Read-only endpoints (issue 28): a compute of its own per endpoint, made from the
branch's history and replicating from the safekeeper, never from the primary: it starts
and serves while the primary is suspended (whose process never appears), refuses writes
with MariaDB's 1290, follows the primary's commits live, and a wake catches up with what
was committed while it slept before its first statement."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pymysql
import pytest

from selkie.control.bootstrap import local_principal
from selkie.model import SuspendTier
from tests.control.history.conftest import (
    finished,
    rows,
    sql,
    start,
    started_project,
    wait_received,
)
from tests.platforms import open_platform

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_a_read_only_endpoint_is_fed_by_the_safekeeper_not_its_primary(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir) as platform:
        who = local_principal(platform.control)
        main = await started_project(
            platform,
            who,
            "ro",
            "CREATE TABLE t (i INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1), (2)",
        )
        pid, primary = main.project.id, main.endpoints[0].id
        await platform.lifecycle.suspend(primary)

        ro, _ = await asyncio.to_thread(
            platform.control.endpoints.create, who, pid, branch_id=main.branch.id, type="read_only"
        )
        second, _ = await asyncio.to_thread(
            platform.control.endpoints.create, who, pid, branch_id=main.branch.id, type="read_only"
        )
        await start(platform, who, pid, ro.id)
        assert not (await platform.driver.inspect(primary)).running
        assert platform.lifecycle.get(primary).current_state.value == "suspended"
        assert await rows(platform, ro.id, main) == [1, 2]
        ((read_only,),) = await asyncio.to_thread(sql, platform, ro.id, main, "SELECT @@read_only")
        assert read_only == 1
        with pytest.raises(pymysql.err.OperationalError) as err:
            await asyncio.to_thread(sql, platform, ro.id, main, "INSERT INTO t VALUES (9)")
        assert err.value.args[0] == 1290

        # The primary writes: the read-only compute has it within moments, from the
        # safekeeper's binlog server.
        await start(platform, who, pid, primary)
        await asyncio.to_thread(sql, platform, primary, main, "INSERT INTO t VALUES (3)")
        await wait_received(platform, primary)
        deadline = time.monotonic() + 10
        while await rows(platform, ro.id, main) != [1, 2, 3]:
            assert time.monotonic() < deadline, await platform.history.replicas.status_text(ro.id)  # type: ignore[union-attr]
            await asyncio.sleep(0.05)

        # Asleep while the primary commits and suspends: its wake catches up first.
        await platform.lifecycle.suspend(ro.id)
        await asyncio.to_thread(sql, platform, primary, main, "INSERT INTO t VALUES (4)")
        last = await wait_received(platform, primary)
        await platform.lifecycle.suspend(primary)
        await start(platform, who, pid, ro.id)
        assert await rows(platform, ro.id, main) == [1, 2, 3, 4]
        status = await platform.replica_status(ro.id)
        assert status.replicating and status.last_error is None, status
        assert status.replayed_lsn == f"0-1-{last}" and status.replication_lag_seconds == 0
        # A second one, made now, from the same history.
        await start(platform, who, pid, second.id)
        assert await rows(platform, second.id, main) == [1, 2, 3, 4]
        assert not (await platform.driver.inspect(primary)).running

        # Frozen (a warm suspend) while the primary commits: its thaw catches up first.
        await start(platform, who, pid, primary)
        await platform.lifecycle.suspend(ro.id, warm=True)
        if platform.driver.supports_freeze:
            assert platform.lifecycle.get(ro.id).suspend_tier is SuspendTier.WARM
        await asyncio.to_thread(sql, platform, primary, main, "INSERT INTO t VALUES (5)")
        await wait_received(platform, primary)
        await start(platform, who, pid, ro.id)
        assert await rows(platform, ro.id, main) == [1, 2, 3, 4, 5]

        # Deleted, its datadir goes; the primary's is untouched.
        datadir = platform.history.replicas.datadir(second.id)  # type: ignore[union-attr]
        assert (datadir / "mysql").is_dir()
        _, ops = await asyncio.to_thread(platform.control.endpoints.delete, who, pid, second.id)
        await finished(platform, who, pid, [o.id for o in ops])
        assert not datadir.exists()
        assert (tmp_path / "data" / "branches" / main.branch.id / "mysql").is_dir()
