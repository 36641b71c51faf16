"""Timelines with ancestors (issue 27), on XFS with reflink and on both archive backends: a
chain main -> dev -> feature, each branched from its parent right after writes (while the
parent runs, and once from suspended parents), each written to after branching. A branch
writes nothing to the archive when it is made; its history is its parent's up to the
branch point, then its own log. With the branches' own images gone and the data dir lost,
every branch rebuilds with exactly its rows; a point-in-time branch of feature before any
image of its own holds exactly the rows of then; retention with a 0-second window keeps
what the descendants read on main and drops the rest; deleting the branches frees what
only they used."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from selkie.archive import segments
from selkie.archive.layout import TimelineRef
from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.model import Principal, utcnow
from selkie.platform import Platform
from selkie.storage import deltas
from selkie.storage.images import INITIAL, list_images
from tests.control.history.conftest import (
    archive_env,
    branch_at,
    finished,
    rows,
    sql,
    start,
    started_project,
    wait_received,
)
from tests.platforms import open_platform
from tests.storage.xfs import xfs_dir  # noqa: F401 - the session fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def base(request: pytest.FixtureRequest) -> Path:
    """The data dir on XFS with reflink, where a branch of a running parent is a clone made
    while the parent is held still: crash-consistent (its compute's first start recovers
    it with the binary log the clone carries)."""
    base: Path = request.getfixturevalue("xfs_dir") / request.node.name.replace("/", "_")
    base.mkdir()
    return base


def ref_of(platform: Platform, branch_id: str) -> TimelineRef:
    assert platform.history is not None
    row = platform.history.current_timeline(branch_id)
    assert row is not None
    return TimelineRef(row.project_id, row.id)


async def objects(platform: Platform, ref: TimelineRef) -> set[str]:
    assert platform.history is not None
    return {o.key for o in await platform.history.archive.list(ref.prefix)}


async def suspend_without_own_images(platform: Platform, chain: list[Created]) -> None:
    """Every branch suspended, and the images the children made of their own removed (as
    if lost before their first): their history is their ancestors' up to each point."""
    assert platform.history is not None
    for b in chain:
        await platform.lifecycle.suspend(b.endpoints[0].id)
    await platform.history.wait_images()
    for b in chain[1:]:
        for image in await list_images(platform.history.archive, ref_of(platform, b.branch.id)):
            await platform.history.archive.delete([image.key])


async def wipe_and_check(
    platform: Platform, who: Principal, base: Path, branches: list[Created], want: list[list[int]]
) -> None:
    """Suspend every branch, lose their datadirs, and start each: exactly its rows."""
    pid = branches[0].project.id
    for b in branches:
        await platform.lifecycle.suspend(b.endpoints[0].id)
        shutil.rmtree(base / "data" / "branches" / b.branch.id)
    for b, rows_then in zip(branches, want, strict=True):
        await start(platform, who, pid, b.endpoints[0].id)
        assert await rows(platform, b.endpoints[0].id, branches[0]) == rows_then, b.branch.name


@pytest.mark.parametrize(
    ("archive", "parents"), [("file", "active"), ("s3", "active"), ("file", "suspended")]
)
async def test_a_chain_of_branches_rebuilds_through_its_ancestry(
    base: Path,
    template_datadir: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    archive: str,
    parents: str,
) -> None:
    # Full images only (a delta keeps the images it builds on: test_retention.py).
    monkeypatch.setattr(deltas, "MAX_DEPTH", 1)
    env = archive_env(archive, base, request)
    aws = env.pop("aws", None)
    async with open_platform(base, template_datadir, aws=aws, **env) as platform:  # type: ignore[arg-type]
        history = platform.history
        assert history is not None
        who = local_principal(platform.control)
        main = await started_project(
            platform, who, "chain", "CREATE TABLE t (i INT PRIMARY KEY)", "INSERT INTO t VALUES (1)"
        )
        pid = main.project.id
        chain = [main]
        points = []
        for n, name in enumerate(["dev", "feature"], start=2):
            parent = chain[-1]
            parent_ep = parent.endpoints[0].id
            await start(platform, who, pid, parent_ep)
            # Writes on the parent, and at once a branch of it.
            await asyncio.to_thread(
                sql,
                platform,
                parent_ep,
                main,
                *[f"INSERT INTO t VALUES ({n}{k})" for k in range(20)],
            )
            point = await wait_received(platform, parent_ep)
            if parents == "suspended":
                await platform.lifecycle.suspend(parent_ep)
            child = await asyncio.to_thread(
                platform.control.branches.create,
                who,
                pid,
                name=name,
                parent_id=parent.branch.id,
                endpoints=[{"type": "read_write"}],
            )
            await finished(platform, who, pid, [o.id for o in child.operations])
            # Nothing of its own in the archive: its timeline begins at the branch point,
            # under its parent's.
            row = history.current_timeline(child.branch.id)
            assert row is not None and row.parent_seq == point == row.start_seq
            assert row.parent_timeline_id == ref_of(platform, parent.branch.id).timeline_id
            assert await objects(platform, ref_of(platform, child.branch.id)) == set()
            await start(platform, who, pid, child.endpoints[0].id)
            await asyncio.to_thread(
                sql, platform, child.endpoints[0].id, main, f"INSERT INTO t VALUES ({n})"
            )
            chain.append(child)
            points.append(point)
        # The parent goes on after the branch: main's log between dev's branch point and
        # its next image is no descendant's.
        main_ep = main.endpoints[0].id
        await start(platform, who, pid, main_ep)
        await history.safekeeper.wait_archived(ref_of(platform, main.branch.id), points[0], 10)
        await asyncio.to_thread(sql, platform, main_ep, main, "INSERT INTO t VALUES (500)")
        await platform.lifecycle.suspend(main_ep)  # an image of main after dev's point
        await history.wait_images()
        await start(platform, who, pid, main_ep)
        await asyncio.to_thread(sql, platform, main_ep, main, "INSERT INTO t VALUES (501)")

        # A point in feature's history before it has an image of its own.
        feature = chain[2]
        feature_ep = feature.endpoints[0].id
        await wait_received(platform, feature_ep)
        await asyncio.sleep(0.05)
        noted = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await asyncio.to_thread(sql, platform, feature_ep, main, "INSERT INTO t VALUES (99)")
        await wait_received(platform, feature_ep)
        for b in chain:
            await start(platform, who, pid, b.endpoints[0].id)
        want = [await rows(platform, b.endpoints[0].id, main) for b in chain]
        assert 99 in want[2] and 500 in want[0] and 500 not in want[1]
        past = await branch_at(
            platform, who, main, "feature-past", parent_id=feature.branch.id, parent_timestamp=noted
        )
        before_99 = [i for i in want[2] if i != 99]
        assert await rows(platform, past.endpoints[0].id, main) == before_99
        chain.append(past)
        want.append(before_99)

        # Images of their own made at the suspends are removed, as if the data dir was lost
        # before any: each branch rebuilds through its ancestors.
        await suspend_without_own_images(platform, chain)
        await wipe_and_check(platform, who, base, chain, want)

        # A 0-second window: main keeps its newest image and what dev reads (its image at or
        # before dev's branch point, its log up to it), and nothing else.
        await asyncio.to_thread(
            platform.control.projects.update, who, pid, settings={"history_retention_seconds": 0}
        )
        await suspend_without_own_images(platform, chain)
        main_ref = ref_of(platform, main.branch.id)
        main_before = await objects(platform, main_ref)
        images_before = await list_images(history.archive, main_ref)
        assert [i.kind for i in images_before][:1] == [INITIAL] and len(images_before) >= 3
        kept_children = [await objects(platform, ref_of(platform, b.branch.id)) for b in chain[1:]]
        await history.prune(utcnow())
        main_after = await objects(platform, main_ref)
        assert main_after < main_before
        images = await list_images(history.archive, main_ref)
        # The image dev reads from (the newest at or before its point), and the newest:
        # main's images in between went.
        dev_reads = max((i for i in images_before if i.seq <= points[0]), key=lambda i: i.seq)
        assert images == [dev_reads, images_before[-1]]
        assert images[0].seq <= points[0] < images[-1].seq
        for key in main_after:
            rng = segments.parse_object_name(key.rsplit("/", 1)[1])
            if rng is not None:  # a log object: up to dev's point, or after main's anchor
                assert rng[0] <= points[0] or rng[1] > images[-1].seq, (rng, points)
        for b, kept in zip(chain[1:], kept_children, strict=True):
            assert await objects(platform, ref_of(platform, b.branch.id)) == kept
        await wipe_and_check(platform, who, base, chain, want)

        # Deleting branches frees what only they used: feature and its child first (a
        # branch with children cannot be deleted), then dev, and with it what main kept
        # for dev.
        await suspend_without_own_images(platform, chain)
        refs = {b.branch.name: ref_of(platform, b.branch.id) for b in chain}
        dev_objects = await objects(platform, refs["dev"])
        for b in (past, feature):
            _, ops = await asyncio.to_thread(
                platform.control.branches.delete, who, pid, b.branch.id
            )
            await finished(platform, who, pid, [o.id for o in ops])
        await asyncio.sleep(0.01)
        await history.prune(utcnow())
        assert await objects(platform, refs["feature"]) == set()
        assert await objects(platform, refs["feature-past"]) == set()
        assert await objects(platform, refs["dev"]) == dev_objects  # dev is live
        assert (await list_images(history.archive, main_ref))[0] == dev_reads
        _, ops = await asyncio.to_thread(
            platform.control.branches.delete, who, pid, chain[1].branch.id
        )
        await finished(platform, who, pid, [o.id for o in ops])
        await asyncio.sleep(0.01)
        await history.prune(utcnow())
        assert await objects(platform, refs["dev"]) == set()
        left = await list_images(history.archive, main_ref)
        assert [i.kind for i in left] == ["suspend"]  # no one reads main's start any more
        await wipe_and_check(platform, who, base, [main], [want[0]])
