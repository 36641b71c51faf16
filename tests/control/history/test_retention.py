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
from selkie.platform import Platform
from selkie.storage import deltas
from selkie.storage.images import Manifest, list_images, read_manifest
from tests.control.history.conftest import branch_at, finished, rows, sql, start, wait_received
from tests.platforms import open_platform

pytestmark = pytest.mark.slow


async def suspend(platform: Platform, who, pid: str, ep: str) -> None:  # type: ignore[no-untyped-def]
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.request, who, pid, ep, OperationAction.SUSPEND_COMPUTE
    )
    await finished(platform, who, pid, [o.id for o in ops])
    assert platform.history is not None
    await platform.history.wait_images()


async def test_prune_keeps_what_the_window_start_needs(
    tmp_path: Path, template_datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Full images only here (deltas: see test_prune_keeps_the_images_deltas_build_on).
    monkeypatch.setattr(deltas, "MAX_DEPTH", 1)
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


async def test_prune_keeps_the_images_deltas_build_on(tmp_path: Path) -> None:
    from selkie.archive import LocalArchive
    from selkie.control.retention import Retention
    from selkie.storage.images import ChunkIndex

    archive = LocalArchive(tmp_path / "archive")
    ref = TimelineRef("p", "tl")
    hour = 3_600_000_000

    def image(seq: int, hours: int, parent: Manifest | None) -> Manifest:
        return Manifest(
            project_id="p",
            timeline_id="tl",
            seq=seq,
            taken_us=hours * hour,
            kind="suspend",
            parent=parent.key if parent else None,
            depth=parent.depth + 1 if parent else 0,
        )

    full1 = image(1, 1, None)
    d2 = image(2, 2, full1)
    full3 = image(3, 3, None)
    d4 = image(4, 4, full3)
    d5 = image(5, 5, d4)
    for m in (full1, d2, full3, d4, d5):
        await archive.put(m.key, m.encode())
        if m.parent:
            await archive.put(m.blob_key, b"pages")
    retention = Retention(store=None, archive=archive, chunks=ChunkIndex())  # type: ignore[arg-type]
    # The window starts between d4 and d5: d4 is the anchor and needs full3; full1 and d2
    # (and d2's pages) are no one's.
    images = await list_images(archive, ref)
    await retention._prune_timeline(ref, images, datetime.fromtimestamp(4.5 * 3600, UTC), set())
    assert [i.seq for i in await list_images(archive, ref)] == [3, 4, 5]
    assert d2.blob_key not in {o.key for o in await archive.list(ref.base_prefix)}
    assert d4.blob_key in {o.key for o in await archive.list(ref.base_prefix)}
    # Had it started between d2 and full3: d2 anchors, and needs full1.
    for m in (full1, d2):
        await archive.put(m.key, m.encode())
    images = await list_images(archive, ref)
    await retention._prune_timeline(ref, images, datetime.fromtimestamp(2.5 * 3600, UTC), set())
    assert [i.seq for i in await list_images(archive, ref)] == [1, 2, 3, 4, 5]
    # Its own window passed, a descendant branched at 4 still reads it: d4 (and full3 it
    # builds on) stay, nothing else.
    await retention._prune_timeline(ref, await list_images(archive, ref), None, {4})
    assert [i.seq for i in await list_images(archive, ref)] == [3, 4]
    # A descendant that began before any image kept: everything stays.
    assert await retention._prune_timeline(ref, await list_images(archive, ref), None, {2}) == 0
