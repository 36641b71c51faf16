"""Point-in-time branches and restores, on both archive backends (a local directory and a
real S3 server): write rows, note the time, write more, and get exactly the first rows
back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from selkie.errors import InvalidInput
from selkie.model import Principal
from selkie.platform import Platform
from tests.control.history.conftest import branch_at, finished, rows, sql, start, wait_received

pytestmark = pytest.mark.slow


async def test_branch_at_a_time_and_restore_with_preserve(
    durable: Platform, who_d: Principal
) -> None:
    platform, who = durable, who_d
    created = await asyncio.to_thread(platform.control.projects.create, who, name="pitr")
    pid, main, ep = created.project.id, created.branch.id, created.endpoints[0].id
    await start(platform, who, pid, ep)
    await asyncio.to_thread(
        sql,
        platform,
        ep,
        created,
        "CREATE TABLE t (i INT PRIMARY KEY, note VARCHAR(100))",
        "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    )
    first = await wait_received(platform, ep)
    await asyncio.sleep(0.05)
    noted = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await asyncio.to_thread(
        sql, platform, ep, created, "INSERT INTO t VALUES (4, 'four')", "DELETE FROM t WHERE i = 1"
    )
    await wait_received(platform, ep)

    # A branch of main as it was at the noted time holds exactly the first rows.
    child = await branch_at(platform, who, created, "before", parent_timestamp=noted)
    assert child.branch.parent_timestamp == noted
    child_ep = child.endpoints[0].id
    assert await rows(platform, child_ep, created) == [1, 2, 3]
    branch = await asyncio.to_thread(platform.control.branches.get, who, pid, child.branch.id)
    assert branch.parent_lsn == f"0-1-{first}"
    # The child is a branch of its own: writes there leave main alone.
    await asyncio.to_thread(sql, platform, child_ep, created, "INSERT INTO t VALUES (10, 'x')")
    assert await rows(platform, ep, created) == [2, 3, 4]

    # A branch at a GTID position.
    at_lsn = await branch_at(platform, who, created, "at-lsn", parent_lsn=f"0-1-{first}")
    assert await rows(platform, at_lsn.endpoints[0].id, created) == [1, 2, 3]

    # Restore main itself to the noted time, keeping what it held as "main-old".
    _, ops = await asyncio.to_thread(
        platform.control.restores.restore,
        who,
        pid,
        main,
        source_branch_id=main,
        source_timestamp=noted,
        preserve_under_name="main-old",
    )
    await finished(platform, who, pid, [o.id for o in ops])
    # Its endpoint (same id, same connection string) ran before and runs again, on the
    # restored data; it goes on writing from there.
    assert platform.lifecycle.get(ep).current_state.value == "active"
    assert await rows(platform, ep, created) == [1, 2, 3]
    await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (5, 'five')")
    assert await rows(platform, ep, created) == [1, 2, 3, 5]

    branches = await asyncio.to_thread(
        platform.control.branches.list, who, pid, cursor=None, limit=50
    )
    old = next(b for b in branches.items if b.name == "main-old")
    old_ep, _ = await asyncio.to_thread(
        platform.control.endpoints.create, who, pid, branch_id=old.id
    )
    await start(platform, who, pid, old_ep.id)
    assert await rows(platform, old_ep.id, created) == [2, 3, 4]
    op = await asyncio.to_thread(platform.control.operations.get, who, pid, ops[0].id)
    assert op.payload["progress"].startswith("restored at 0-1-")


async def test_targets_outside_the_window_are_refused(durable: Platform, who_d: Principal) -> None:
    platform, who = durable, who_d
    created = await asyncio.to_thread(platform.control.projects.create, who, name="window")
    pid, main = created.project.id, created.branch.id
    await start(platform, who, pid, created.endpoints[0].id)
    future = datetime(2999, 1, 1, tzinfo=UTC)
    past = datetime(2000, 1, 1, tzinfo=UTC)
    for when in (future, past):
        with pytest.raises(InvalidInput, match="outside the history of branch") as info:
            await asyncio.to_thread(
                platform.control.restores.restore,
                who,
                pid,
                main,
                source_branch_id=main,
                source_timestamp=when,
            )
        assert "history_retention_seconds=86400" in info.value.message
        with pytest.raises(InvalidInput, match="outside the history"):
            await asyncio.to_thread(
                platform.control.branches.create, who, pid, parent_timestamp=when
            )
    with pytest.raises(InvalidInput, match="not a GTID"):
        await asyncio.to_thread(platform.control.branches.create, who, pid, parent_lsn="12:34")
    with pytest.raises(InvalidInput, match="not both"):
        await asyncio.to_thread(
            platform.control.branches.create,
            who,
            pid,
            parent_lsn="0-1-1",
            parent_timestamp=datetime.now(UTC),
        )
