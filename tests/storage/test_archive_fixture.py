"""An archive written by an earlier version restores with today's code (issue 30, item 5).

tests/fixtures/archive-v1 was written by scripts/archive_fixture.py (2026-12-06): a full
initial image, two delta images taken at clean suspends, and the log. Restored at a point
between the images (the delta chain, then the log replayed by the replication applier) and
at the end, it holds exactly the rows written by then. A change of the archive's format
that breaks this needs a migration and a fixture of its own beside this one; this one stays.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from selkie.archive import LocalArchive
from selkie.archive.layout import TimelineRef
from selkie.storage.replay import replay_server
from selkie.storage.restore import Target, Tools, restore
from selkie.storage.verify import verify
from tests.platforms import require_mariadb

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "archive-v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.mark.parametrize("point", EXPECTED["points"], ids=lambda p: f"seq-{p['seq']}")
async def test_the_v1_archive_restores(tmp_path: Path, point: dict) -> None:  # type: ignore[type-arg]
    require_mariadb()
    shutil.copytree(FIXTURE / "archive", tmp_path / "archive")
    archive = LocalArchive(tmp_path / "archive")
    assert (await verify(archive)).ok
    ref = TimelineRef(EXPECTED["project_id"], EXPECTED["timeline_id"])
    staging = tmp_path / "staging"
    restored = await restore(archive, ref, Target(until_seq=point["seq"]), staging, tools=Tools())
    assert restored.seq == point["seq"]
    async with replay_server(staging, Tools()) as server:
        rows = await server.sql(f"SELECT i, v FROM `{EXPECTED['database']}`.t ORDER BY i")
    assert [list(r) for r in rows] == point["rows"]
