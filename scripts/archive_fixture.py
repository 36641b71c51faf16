"""Write the archive fixture tests/fixtures/archive-v1 (run once per archive format).

A platform on a temporary data dir with a file archive: a project, rows written, a clean
suspend (its base image), more rows (the log after the image), another suspend; then the
project's folder of the archive is copied into the fixture with ``expected.json`` (the
project and timeline ids, and the rows the timeline holds at two sequence numbers: one a
restore reaches by replaying the log after the first image, one at the end).
tests/storage/test_archive_fixture.py restores both with the code of the day: an archive
written today must stay readable by every later version (a format change needs a
migration and a new fixture beside this one).

Usage: .venv/bin/python scripts/archive_fixture.py tests/fixtures/archive-v1
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from selkie.config import load_settings
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform


async def position(platform: Platform, endpoint_id: str) -> int:
    ((row,),) = (await platform.driver.execute(endpoint_id, ["SELECT @@gtid_binlog_pos"]))[0]
    return int(str(row).rsplit("-", 1)[1])


async def main() -> tuple[Path, dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="selkie-fixture-"))
    settings = load_settings(
        environ={
            "SELKIE_DATA_DIR": str(work / "data"),
            "SELKIE_ARCHIVE_URL": f"file://{work / 'archive'}",
        }
    )
    platform = Platform.open(settings)
    await platform.start()
    try:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await asyncio.to_thread(platform.control.projects.create, who, name="fixture")
        await platform.runner.wait_idle()
        pid, ep = created.project.id, created.endpoints[0].id
        db = created.databases[0].name
        await platform.lifecycle.start(ep)
        await platform.driver.execute(
            ep,
            [
                f"CREATE TABLE `{db}`.t (i INT PRIMARY KEY, v VARCHAR(20))",
                *(f"INSERT INTO `{db}`.t VALUES ({i}, 'row {i}')" for i in range(1, 4)),
            ],
        )
        await platform.lifecycle.suspend(ep)
        await platform.history.wait_images()
        await platform.lifecycle.start(ep)
        marks = []
        for i in range(4, 7):
            await platform.driver.execute(ep, [f"INSERT INTO `{db}`.t VALUES ({i}, 'row {i}')"])
            marks.append((await position(platform, ep), i))
        await platform.lifecycle.suspend(ep)
        await platform.history.wait_images()
        branch = platform.history.current_timeline(created.branch.id)
        assert branch is not None
        timeline_id = branch.id
    finally:
        await platform.stop()
        platform.close()
    (mid_seq, mid_i), (end_seq, end_i) = marks[0], marks[-1]
    return work, {
        "project_id": pid,
        "timeline_id": timeline_id,
        "database": db,
        "points": [
            {"seq": mid_seq, "rows": [[i, f"row {i}"] for i in range(1, mid_i + 1)]},
            {"seq": end_seq, "rows": [[i, f"row {i}"] for i in range(1, end_i + 1)]},
        ],
    }


def write(out: Path, work: Path, expected: dict[str, Any]) -> None:
    """The project's folder of the archive, and what it holds, into ``out``."""
    if out.exists():
        shutil.rmtree(out)
    pid = expected["project_id"]
    shutil.copytree(work / "archive" / "projects" / pid, out / "archive" / "projects" / pid)
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    write(Path(sys.argv[1]), *asyncio.run(main()))
