"""`selkie archive verify` (issue 30, item 5): a real archive (a directory and SeaweedFS)
written by a project that ran, suspended and ran again reads back clean; a corrupted chunk
and a missing log segment are each named, and the command exits 1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

from selkie.archive.layout import TimelineRef, chunk_key
from selkie.archive.segments import parse_object_name
from selkie.model import Principal
from selkie.platform import Platform, open_settings_archive
from selkie.storage.images import list_images, read_manifest
from selkie.storage.verify import verify
from tests.control.history.conftest import sql, start, started_project, wait_received
from tests.helpers import SELKIE


def run_verify(platform: Platform, project_id: str) -> tuple[int, dict[str, Any]]:
    """The command, as an operator runs it on this host: the archive from the settings."""
    s = platform.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELKIE_", "AWS_"))}
    env.update(
        SELKIE_DATA_DIR=str(s.data_dir),
        SELKIE_ARCHIVE_URL=s.effective_archive_url,
        AWS_ENDPOINT_URL_S3=s.s3_endpoint,
        AWS_REGION=s.s3_region,
        AWS_ACCESS_KEY_ID=s.s3_access_key_id,
        AWS_SECRET_ACCESS_KEY=s.s3_secret_access_key,
    )
    out = subprocess.run(
        [*SELKIE, "archive", "verify", "--project", project_id, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, json.loads(out.stdout)


async def test_the_archive_reads_back_and_names_what_is_broken(
    durable: Platform, who_d: Principal
) -> None:
    platform, who = durable, who_d
    assert platform.history is not None
    created = await started_project(
        platform, who, "verified", "CREATE TABLE t (i INT PRIMARY KEY)", "INSERT INTO t VALUES (1)"
    )
    pid, ep = created.project.id, created.endpoints[0].id
    for n in range(2, 4):  # runs and clean stops: images and several log segments
        await asyncio.to_thread(sql, platform, ep, created, f"INSERT INTO t VALUES ({n})")
        await wait_received(platform, ep)
        await platform.lifecycle.suspend(ep)
        await platform.history.wait_images()
        await start(platform, who, pid, ep)
    await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (5)")
    await wait_received(platform, ep)
    await platform.lifecycle.suspend(ep)
    await platform.history.wait_images()

    archive = platform.history.archive
    report = await verify(archive, pid)
    assert report.ok, report.findings
    assert report.timelines >= 1 and report.images >= 2 and report.chunks > 0
    assert report.segments >= 2
    code, result = await asyncio.to_thread(run_verify, platform, pid)
    assert code == 0 and result["ok"] and result["segments"] == report.segments

    # One chunk of the oldest image overwritten, one log segment after the oldest image gone.
    timeline = platform.history.current_timeline(created.branch.id)
    assert timeline is not None
    ref = TimelineRef(pid, timeline.id)
    images = await list_images(archive, ref)
    manifest = await read_manifest(archive, images[0].key)  # a full image: it has chunks
    digest = next(d for f in manifest.files for d in f.chunks)
    await archive.put(chunk_key(pid, digest), b"not what was stored")
    oldest = images[0].seq
    segments = sorted(
        (parse_object_name(o.key.rsplit("/", 1)[1]), o.key)
        for o in await archive.list(ref.wal_prefix)
    )
    after = [(span, key) for span, key in segments if span is not None and span[0] > oldest]
    assert len(after) >= 2, segments  # one to lose, one beyond it
    lost = after[0][1]
    await archive.delete([lost])

    code, result = await asyncio.to_thread(run_verify, platform, pid)
    problems = {f["key"]: f["problem"] for f in result["findings"]}
    assert code == 1 and not result["ok"], result
    assert "corrupt" in problems[chunk_key(pid, digest)]
    assert "missing sequence numbers" in problems[ref.wal_prefix]
    archive_again = open_settings_archive(platform.settings)
    try:
        assert not (await verify(archive_again, pid)).ok
    finally:
        await archive_again.close()
