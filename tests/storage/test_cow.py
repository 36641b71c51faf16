"""Copy-on-write branches: on XFS with reflink a branch's datadir shares its parent's
extents (FIEMAP says so) and both diverge correctly after writes; a branch of an active
parent under a write load is consistent (its rows match its GTID position) and the parent
loses nothing. The same behaviour on the plain data dir (ordinary copies there)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform
from selkie.storage.clone import can_clone, shared_bytes
from selkie.storage.local import backup_position
from tests.control.history.conftest import (
    compute_position,
    finished,
    sql,
    start,
    started_project,
)
from tests.platforms import open_platform
from tests.storage.xfs import xfs_dir  # noqa: F401 - the session fixture

pytestmark = pytest.mark.timeout(600)

BLOB = 1 << 20  # 1 MiB rows
ROWS = 40  # enough that shared extents are measured in tens of MiB


@pytest.fixture(params=["xfs", "plain"])
async def platform(
    request: pytest.FixtureRequest, tmp_path: Path, template_datadir: Path
) -> AsyncIterator[Platform]:
    base = tmp_path
    if request.param == "xfs":
        base = request.getfixturevalue("xfs_dir") / request.node.name.replace("/", "_")
        base.mkdir()
    async with open_platform(base, template_datadir) as p:
        yield p


async def branch(platform: Platform, created: Created, name: str) -> Created:
    who = local_principal(platform.control)
    pid = created.project.id
    child = await asyncio.to_thread(
        platform.control.branches.create, who, pid, name=name, endpoints=[{"type": "read_write"}]
    )
    await finished(platform, who, pid, [o.id for o in child.operations])
    return child


def datadir(platform: Platform, branch_id: str) -> Path:
    return platform.settings.data_dir / "branches" / branch_id


async def test_a_branch_shares_its_parents_blocks_and_diverges(platform: Platform) -> None:
    who = local_principal(platform.control)
    created = await started_project(
        platform,
        who,
        "cow",
        "CREATE TABLE big (i INT PRIMARY KEY, b LONGBLOB)",
        *[f"INSERT INTO big VALUES ({i}, REPEAT('x', {BLOB}))" for i in range(ROWS)],
    )
    pid, ep = created.project.id, created.endpoints[0].id
    await platform.lifecycle.suspend(ep)
    child = await branch(platform, created, "child")
    parent_ibd = datadir(platform, created.branch.id) / "selkiedb" / "big.ibd"
    child_ibd = datadir(platform, child.branch.id) / "selkiedb" / "big.ibd"
    assert child_ibd.stat().st_size == parent_ibd.stat().st_size > ROWS * BLOB
    cloning = can_clone(platform.settings.data_dir)
    assert cloning == ("selkie-xfs-" in str(platform.settings.data_dir))
    shared = shared_bytes(child_ibd)
    if cloning:
        assert shared > ROWS * BLOB * 0.9, shared  # the child holds no copy of its own
    else:
        assert shared == 0
    # Billed storage: a fresh branch costs what it does not share with its parent.
    full = await platform.storage.branch_size(child.branch.id)
    billed = await platform.storage.billed_size(child.branch.id, has_parent=True)
    assert full is not None and billed is not None and full > ROWS * BLOB
    if cloning:
        assert billed < full * 0.2, (billed, full)
    else:
        assert billed == full
    # Both sides change independently.
    cep = child.endpoints[0].id
    await start(platform, who, pid, cep)
    await asyncio.to_thread(sql, platform, cep, created, f"DELETE FROM big WHERE i < {ROWS // 2}")
    await start(platform, who, pid, ep)
    await asyncio.to_thread(
        sql, platform, ep, created, f"UPDATE big SET b = 'parent' WHERE i = {ROWS - 1}"
    )
    on_child = await asyncio.to_thread(
        sql, platform, cep, created, "SELECT COUNT(*), MAX(LENGTH(b)) FROM big"
    )
    on_parent = await asyncio.to_thread(
        sql, platform, ep, created, "SELECT COUNT(*), MIN(LENGTH(b)) FROM big"
    )
    assert on_child == [(ROWS - ROWS // 2, BLOB)]
    assert on_parent == [(ROWS, 6)]


async def test_a_branch_of_an_active_parent_under_load(platform: Platform) -> None:
    who = local_principal(platform.control)
    created = await asyncio.to_thread(platform.control.projects.create, who, name="busy")
    pid, ep = created.project.id, created.endpoints[0].id
    await start(platform, who, pid, ep)
    await asyncio.to_thread(
        sql, platform, ep, created, "CREATE TABLE w (i INT AUTO_INCREMENT PRIMARY KEY, v INT)"
    )
    base = await compute_position(platform, ep)
    acked = [0]
    stop = threading.Event()

    def writer() -> None:
        from tests.platforms import sql as compute_sql

        owner = created.roles[0]
        while not stop.is_set():
            compute_sql(
                platform,
                ep,
                owner.name,
                owner.password or "",
                created.databases[0].name,
                *["INSERT INTO w (v) VALUES (1)"] * 20,
            )
            acked[0] += 20

    task = asyncio.create_task(asyncio.to_thread(writer))
    await asyncio.sleep(1.0)
    before = acked[0]
    child = await branch(platform, created, "busy-child")
    after = acked[0]
    await asyncio.sleep(0.5)
    stop.set()
    await task
    # The parent lost nothing.
    ((count,),) = await asyncio.to_thread(sql, platform, ep, created, "SELECT COUNT(*) FROM w")
    assert count == acked[0]
    # The child holds a consistent point: its rows are exactly the transactions up to its
    # GTID position, somewhere between what was acknowledged before and after the branch.
    cep = child.endpoints[0].id
    # Cloned, the child's own binary log says where it is; a hot backup records it apart
    # (the copy starts a binary log of its own).
    recorded = backup_position(datadir(platform, child.branch.id))
    await start(platform, who, pid, cep)
    ((rows,),) = await asyncio.to_thread(sql, platform, cep, created, "SELECT COUNT(*) FROM w")
    position = recorded or await compute_position(platform, cep)
    assert rows == position - base, (rows, position, base)
    assert before <= rows <= after + 20, (before, rows, after)
    if can_clone(platform.settings.data_dir):
        assert platform.driver.last_pause_ms[ep] < 1000  # type: ignore[attr-defined]
