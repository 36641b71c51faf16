"""A chain of branches, each made from its parent while the parent runs right after writes,
each written to after branching: with its data dir lost (the state store, archive and
safekeeper kept), every branch comes back with exactly its rows (issue 27: a branch of an
active parent could not be rebuilt — its first image was a crash-consistent copy whose
recovery needed the binary log the image leaves out)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from selkie.archive.layout import TimelineRef
from selkie.control.bootstrap import local_principal
from selkie.storage.images import list_images
from tests.control.history.conftest import finished, rows, sql, start, started_project
from tests.platforms import open_platform
from tests.storage.xfs import xfs_dir  # noqa: F401 - the session fixture


@pytest.fixture
def base(request: pytest.FixtureRequest) -> Path:
    """The data dir on XFS with reflink, where a branch of a running parent is a clone made
    while the parent is held still: crash-consistent (elsewhere it is a hot backup, which
    mariadb-backup leaves prepared)."""
    base: Path = request.getfixturevalue("xfs_dir") / request.node.name.replace("/", "_")
    base.mkdir()
    return base


async def test_a_chain_of_branches_of_active_parents_rebuilds_exactly(
    base: Path, template_datadir: Path
) -> None:
    async with open_platform(base, template_datadir) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        main = await started_project(
            platform, who, "chain", "CREATE TABLE t (i INT PRIMARY KEY)", "INSERT INTO t VALUES (1)"
        )
        pid = main.project.id
        chain = [main]
        for n, name in enumerate(["dev", "feature"], start=2):
            parent = chain[-1]
            parent_ep = parent.endpoints[0].id
            # Writes on the running parent, and at once a branch of it.
            await asyncio.to_thread(
                sql,
                platform,
                parent_ep,
                main,
                *[f"INSERT INTO t VALUES ({n}{k})" for k in range(20)],
            )
            child = await asyncio.to_thread(
                platform.control.branches.create,
                who,
                pid,
                name=name,
                parent_id=parent.branch.id,
                endpoints=[{"type": "read_write"}],
            )
            await finished(platform, who, pid, [o.id for o in child.operations])
            await start(platform, who, pid, child.endpoints[0].id)
            await asyncio.to_thread(
                sql, platform, child.endpoints[0].id, main, f"INSERT INTO t VALUES ({n})"
            )
            chain.append(child)
        expected = [await rows(platform, b.endpoints[0].id, main) for b in chain]
        for b in chain:
            await platform.lifecycle.suspend(b.endpoints[0].id)
        await platform.history.wait_images()
        # As after a crash: no image taken at a clean stop, only each branch's first one.
        for b in chain:
            timeline = platform.history.current_timeline(b.branch.id)
            assert timeline is not None
            ref = TimelineRef(pid, timeline.id)
            for image in await list_images(platform.history.archive, ref):
                if image.kind != "initial":
                    await platform.history.archive.delete([image.key])
            shutil.rmtree(base / "data" / "branches" / b.branch.id)
        for b, want in zip(chain, expected, strict=True):
            await start(platform, who, pid, b.endpoints[0].id)
            assert await rows(platform, b.endpoints[0].id, main) == want
