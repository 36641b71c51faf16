"""Faults of durable storage with real computes: a corrupt archive object fails a restore
with its name and touches nothing; what a crash leaves (staged restores, a datadir of
another timeline) is cleaned up or rebuilt; a running compute gets hot base images."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from selkie.archive.layout import TimelineRef, chunk_prefix
from selkie.control.bootstrap import local_principal
from selkie.model import OperationStatus
from selkie.storage.images import list_images
from selkie.storage.local import LocalStorage
from tests.control.history.conftest import (
    compute_position,
    rows,
    sql,
    start,
    started_project,
    wait_received,
)
from tests.platforms import open_platform

pytestmark = pytest.mark.slow


async def test_a_corrupt_chunk_fails_the_restore_and_replaces_nothing(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await started_project(
            platform,
            who,
            "c",
            "CREATE TABLE t (i INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1)",
        )
        pid, main, ep = created.project.id, created.branch.id, created.endpoints[0].id
        # Every chunk of the archive damaged: whatever image a restore picks is unusable.
        archive_dir = tmp_path / "data" / "archive"
        for obj in await platform.history.archive.list(chunk_prefix(pid)):
            path = archive_dir / obj.key
            path.write_bytes(b"\x00" + path.read_bytes()[1:])
        _, ops = await asyncio.to_thread(
            platform.control.restores.restore, who, pid, main, source_branch_id=main
        )
        await platform.runner.wait_idle(timeout=120)
        op = await asyncio.to_thread(platform.control.operations.get, who, pid, ops[0].id)
        assert op.status is OperationStatus.FAILED
        assert (
            op.error is not None
            and "is corrupt" in op.error
            and f"projects/{pid}/chunks/" in op.error
        )
        # Nothing was swapped: the branch still runs on its own data.
        assert platform.lifecycle.get(ep).current_state.value == "active"
        assert await rows(platform, ep, created) == [1]
        leftovers = [p.name for p in (tmp_path / "data" / "branches").iterdir() if "." in p.name]
        assert leftovers == []


async def test_crash_leftovers_are_cleaned_and_stale_datadirs_rebuilt(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await started_project(
            platform,
            who,
            "crash",
            "CREATE TABLE t (i INT PRIMARY KEY)",
            "INSERT INTO t VALUES (7)",
        )
        pid, bid, ep = created.project.id, created.branch.id, created.endpoints[0].id
        await platform.lifecycle.suspend(ep)
        await platform.history.wait_images()
    branches = tmp_path / "data" / "branches"
    # A restore that died half-way left its staging directory, and the datadir names a
    # timeline that is not the branch's (a crash between the switch and the swap).
    (branches / f"{bid}.restore-dead").mkdir()
    (branches / f"{bid}.restore-dead" / "junk").write_text("x")
    LocalStorage.mark_timeline(branches / bid, "tl-not-this-one")
    async with open_platform(tmp_path, template_datadir) as platform:
        assert [p.name for p in branches.iterdir() if "." in p.name] == []
        who = local_principal(platform.control)
        await start(platform, who, pid, ep)
        assert await rows(platform, ep, created) == [7]
        assert platform.history is not None
        assert platform.history.metrics.restores == 1


async def test_a_running_compute_gets_hot_base_images(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir, base_image_interval="1") as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await asyncio.to_thread(platform.control.projects.create, who, name="hot")
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
        seq = await wait_received(platform, ep)
        (st,) = [s for s in platform.history.safekeeper.status() if s.endpoint_id == ep]
        ref = TimelineRef(pid, st.timeline_id)
        for _ in range(100):
            hot = [i for i in await list_images(platform.history.archive, ref) if i.kind == "hot"]
            if hot and hot[-1].seq >= seq:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("no hot base image was made")
        # It is a usable image: the datadir lost, the branch comes back from it.
        await platform.lifecycle.suspend(ep)
        await platform.history.wait_images()
        for image in await list_images(platform.history.archive, ref):
            if image.kind == "suspend":
                await platform.history.archive.delete([image.key])
        import shutil

        shutil.rmtree(tmp_path / "data" / "branches" / created.branch.id)
        await start(platform, who, pid, ep)
        assert await rows(platform, ep, created) == [1]


async def test_binary_log_files_the_archive_holds_are_purged(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await asyncio.to_thread(platform.control.projects.create, who, name="purge")
        pid, ep = created.project.id, created.endpoints[0].id
        await start(platform, who, pid, ep)
        await asyncio.to_thread(sql, platform, ep, created, "CREATE TABLE t (i INT PRIMARY KEY)")
        for i in range(3):
            await asyncio.to_thread(sql, platform, ep, created, f"INSERT INTO t VALUES ({i})")
            await platform.driver.execute(ep, ["FLUSH BINARY LOGS"])
        seq = await wait_received(platform, ep)
        (st,) = [s for s in platform.history.safekeeper.status() if s.endpoint_id == ep]
        assert await platform.history.safekeeper.wait_archived(
            TimelineRef(pid, st.timeline_id), seq, 10
        )
        # (The scheduler's leader purges too, now and then: it may have begun.)
        await platform.history.following.purge_binlogs()
        (after,) = await platform.driver.execute(ep, ["SHOW BINARY LOGS"])
        # Four files were written; the older ones go; the one the safekeeper's dump thread
        # still holds open may stay until it has moved on (MariaDB keeps a file in use).
        assert [r[0] for r in after] in (["binlog.000004"], ["binlog.000003", "binlog.000004"])
        # A clean suspend still finds everything, and the history is whole.
        await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (9)")
        await platform.lifecycle.suspend(ep)
        await start(platform, who, pid, ep)
        assert await rows(platform, ep, created) == [0, 1, 2, 9]


async def test_delta_images_store_changed_pages_and_rebuild_the_datadir_exactly(
    tmp_path: Path, template_datadir: Path
) -> None:
    from selkie.storage.deltas import materialize_image
    from selkie.storage.images import read_manifest, skipped

    async with open_platform(tmp_path, template_datadir) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await asyncio.to_thread(platform.control.projects.create, who, name="delta")
        pid, ep, bid = created.project.id, created.endpoints[0].id, created.branch.id
        await start(platform, who, pid, ep)
        await asyncio.to_thread(
            sql,
            platform,
            ep,
            created,
            "CREATE TABLE t (i INT PRIMARY KEY, pad VARBINARY(1000))",
            "INSERT INTO t SELECT seq, RANDOM_BYTES(1000) FROM seq_1_to_20000",
        )
        for where in ("i % 500 = 0", "i > 19900"):
            await platform.lifecycle.suspend(ep)
            await platform.history.wait_images()
            await start(platform, who, pid, ep)
            await asyncio.to_thread(
                sql, platform, ep, created, f"UPDATE t SET pad = RANDOM_BYTES(1000) WHERE {where}"
            )
        await platform.lifecycle.suspend(ep)
        await platform.history.wait_images()
        (st,) = [s for s in platform.history.safekeeper.status() if s.timeline_id]
        images = await list_images(platform.history.archive, TimelineRef(pid, st.timeline_id))
        newest = await read_manifest(platform.history.archive, images[-1].key)
        # A delta of a delta: a few pages of the 20 MB table, not its chunks.
        assert newest.parent is not None and newest.depth == 2
        assert sum(len(d.pages) for d in newest.deltas) < 200
        out = tmp_path / "materialized"
        await materialize_image(platform.history.archive, newest.key, out)
        datadir = tmp_path / "data" / "branches" / bid
        for path in datadir.rglob("*"):
            rel = path.relative_to(datadir).as_posix()
            if path.is_file() and not skipped(rel):
                assert (out / rel).read_bytes() == path.read_bytes(), rel


async def test_every_clean_suspend_leaves_the_whole_log_in_the_safekeeper(
    tmp_path: Path, template_datadir: Path
) -> None:
    """A suspend right after a large commit: the stream is cut mid-transaction by the
    shutdown, so the end comes from the stopped datadir's files; either way the safekeeper
    holds the compute's last transaction when the suspend returns."""
    async with open_platform(tmp_path, template_datadir) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await started_project(
            platform,
            who,
            "suspend",
            "CREATE TABLE t (i INT PRIMARY KEY, pad VARBINARY(1000))",
            "INSERT INTO t SELECT seq, RANDOM_BYTES(1000) FROM seq_1_to_20000",
        )
        pid, ep = created.project.id, created.endpoints[0].id
        for n in (1, 5000, 100, 5000, 20000, 5000):
            await start(platform, who, pid, ep)
            await asyncio.to_thread(
                sql, platform, ep, created, f"UPDATE t SET pad = RANDOM_BYTES(1000) LIMIT {n}"
            )
            want = await compute_position(platform, ep)
            await platform.lifecycle.suspend(ep)
            (st,) = platform.history.safekeeper.status()
            assert st.last_seq == want, (n, st)
