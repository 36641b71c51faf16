"""Durable storage through a faulty S3 (issue 30, item 5): the first try of one request in
three is answered 503 Slow Down or has its connection dropped (tests/s3_faults.py, in front of the
SeaweedFS server). The log is shipped, base images are made, the archive verifies, and a
branch whose data dir is lost is rebuilt from it — the client's retries carry every call."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from selkie.control.bootstrap import local_principal
from selkie.storage.verify import verify
from tests.conftest import s3_options
from tests.control.history.conftest import rows, start, started_project
from tests.platforms import open_platform
from tests.s3_faults import FaultyS3
from tests.seaweedfs import S3Server


async def test_shipping_images_and_a_rebuild_go_through_a_faulty_s3(
    tmp_path: Path, template_datadir: Path, s3_server: S3Server
) -> None:
    front = FaultyS3(s3_server.endpoint, every=3)
    await front.start()
    opts = s3_options(s3_server)
    aws = {
        "AWS_ENDPOINT_URL_S3": front.endpoint,
        "AWS_REGION": opts["region"],
        "AWS_ACCESS_KEY_ID": opts["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": opts["secret_access_key"],
    }
    archive_url = s3_server.url(f"faulty-{secrets.token_hex(4)}")
    try:
        async with open_platform(
            tmp_path, template_datadir, archive_url=archive_url, aws=aws
        ) as platform:
            assert platform.history is not None
            who = local_principal(platform.control)
            created = await started_project(
                platform,
                who,
                "faulty",
                "CREATE TABLE t (i INT PRIMARY KEY)",
                "INSERT INTO t VALUES (1), (2)",
            )
            pid, ep = created.project.id, created.endpoints[0].id
            await platform.lifecycle.suspend(ep)
            await platform.history.wait_images()
            report = await verify(platform.history.archive, pid)
            assert report.ok and report.images >= 2 and report.segments >= 1, report.findings
            shutil.rmtree(tmp_path / "data" / "branches" / created.branch.id)
            await start(platform, who, pid, ep)  # rebuilt from the archive, through the front
            assert await rows(platform, ep, created) == [1, 2]
    finally:
        await front.stop()
    assert front.injected["503"] > 0 and front.injected["dropped"] > 0, front.injected
    assert front.forwarded > sum(front.injected.values())
