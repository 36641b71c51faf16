"""Retention: history older than history_retention_seconds is pruned, a restore to the
window's start still works, and a target before it is refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from selkie.archive.layout import TimelineRef, chunk_prefix
from selkie.control.bootstrap import local_principal
from selkie.errors import InvalidInput
from selkie.model import OperationAction
from selkie.server import Platform
from selkie.storage.images import list_images, read_manifest
from tests.compute.conftest import open_platform
from tests.history.conftest import branch_at, finished, rows, sql, start, wait_received

pytestmark = pytest.mark.slow


async def suspend(platform: Platform, who, pid: str, ep: str) -> None:  # type: ignore[no-untyped-def]
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.request, who, pid, ep, OperationAction.SUSPEND_COMPUTE
    )
    await finished(platform, who, pid, [o.id for o in ops])
    assert platform.history is not None
    await platform.history.wait_images()


async def test_prune_keeps_what_the_window_start_needs(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir) as platform:
        assert platform.history is not None
        history = platform.history
        who = local_principal(platform.control)
        created = await asyncio.to_thread(
            platform.control.projects.create,
            who,
            name="kept",
            settings={"history_retention_seconds": 3600},
        )
        pid, ep = created.project.id, created.endpoints[0].id
        await start(platform, who, pid, ep)
        await asyncio.to_thread(
            sql,
            platform,
            ep,
            created,
            "CREATE TABLE t (i INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1)",
        )
        await wait_received(platform, ep)
        await suspend(platform, who, pid, ep)
        window_start = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await start(platform, who, pid, ep)
        await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (2)")
        await wait_received(platform, ep)
        await suspend(platform, who, pid, ep)
        await start(platform, who, pid, ep)
        await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (3)")
        seq = await wait_received(platform, ep)

        ((timeline_id,),) = [
            (st.timeline_id,) for st in history.safekeeper.status() if st.endpoint_id == ep
        ]
        ref = TimelineRef(pid, timeline_id)
        assert platform.history.safekeeper is not None
        await history.safekeeper.wait_archived(ref, seq, 10)
        before = await list_images(history.archive, ref)
        assert [i.kind for i in before] == ["initial", "suspend", "suspend"]
        chunks_before = {o.key for o in await history.archive.list(chunk_prefix(pid))}

        # An hour later, the window starts where the first suspend's image was taken.
        deleted = await history.prune(window_start + timedelta(seconds=3600))
        assert deleted > 0
        after = await list_images(history.archive, ref)
        assert after == before[1:]
        wal = [o.key for o in await history.archive.list(ref.wal_prefix)]
        assert all(int(k.rsplit("/", 1)[1].split("-")[1].split(".")[0]) > after[0].seq for k in wal)
        # Every chunk an image still names is there; some only the pruned one named are not.
        named = set()
        for image in after:
            for f in (await read_manifest(history.archive, image.key)).files:
                named.update(f.chunks)
        chunks_after = {
            o.key.rsplit("/", 1)[1] for o in await history.archive.list(chunk_prefix(pid))
        }
        assert named <= chunks_after
        assert len(chunks_after) < len(chunks_before)

        # A branch at the window's start: the image kept there, and the log after it.
        child = await branch_at(
            platform, who, created, "window-start", parent_timestamp=window_start
        )
        assert await rows(platform, child.endpoints[0].id, created) == [1]
        # Before the window (here: before the first image kept), the history is gone.
        too_early = await asyncio.to_thread(
            platform.control.branches.create,
            who,
            pid,
            name="too-early",
            parent_timestamp=before[0].taken_us
            and datetime.fromtimestamp(before[0].taken_us / 1e6, UTC),
        )
        await platform.runner.wait_idle(timeout=120)
        op = await asyncio.to_thread(
            platform.control.operations.get, who, pid, too_early.operations[0].id
        )
        assert op.error is not None and "before the history kept" in op.error
        # And the API refuses targets before the window outright.
        with pytest.raises(InvalidInput, match="outside the history"):
            await asyncio.to_thread(
                platform.control.branches.create,
                who,
                pid,
                parent_timestamp=datetime.now(UTC) - timedelta(seconds=3700),
            )
