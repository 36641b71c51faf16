"""durability=sync: commits wait for the safekeeper; with the safekeeper gone they fall back
to async after the timeout, visibly (the endpoint's durability route, /metrics), and wait
again once it is back. And what /metrics says about the archive."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from selkie.api.app import create_app
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform
from tests.control.history.conftest import sql, start, wait_received
from tests.platforms import open_platform

pytestmark = pytest.mark.slow


async def timed_insert(platform: Platform, ep: str, created, i: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    await asyncio.to_thread(sql, platform, ep, created, f"INSERT INTO t VALUES ({i})")
    return time.perf_counter() - t0


async def test_sync_commits_fall_back_when_the_safekeeper_is_gone(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir, sync_commit_timeout_ms="800") as platform:
        assert platform.history is not None
        history = platform.history
        who = local_principal(platform.control)
        created = await asyncio.to_thread(
            platform.control.projects.create, who, name="sync", settings={"durability": "sync"}
        )
        pid, ep, bid = created.project.id, created.endpoints[0].id, created.branch.id
        await start(platform, who, pid, ep)
        await asyncio.to_thread(sql, platform, ep, created, "CREATE TABLE t (i INT PRIMARY KEY)")
        assert await timed_insert(platform, ep, created, 1) < 0.5
        ((yes,),) = await platform.driver.execute(
            ep, ["SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_yes_tx'"]
        )
        assert int(yes[1]) >= 2  # acknowledged by the safekeeper, not timed out
        await history.following.sample_semi_sync()
        assert (
            history.following.durable(ep, created.project.settings.durability).sync_commit == "on"
        )

        # The safekeeper stops following: the next commit waits out the timeout, then the
        # compute commits asynchronously, and says so.
        await history.safekeeper.detach(ep)
        assert await timed_insert(platform, ep, created, 2) >= 0.7
        assert await timed_insert(platform, ep, created, 3) < 0.5
        await history.following.sample_semi_sync()
        state = history.following.durable(ep, created.project.settings.durability)
        assert state.sync_commit == "fallen_back" and not state.streaming
        metrics = platform.prometheus().decode()
        assert "selkie_archive_lag_seconds" in metrics

        # Back: it catches up from where it was, and commits wait for it again.
        info = await platform.driver.inspect(ep)
        await history.following.attach(ep, bid, created.project, info)
        await wait_received(platform, ep)
        deadline = time.monotonic() + 10
        while True:
            await asyncio.sleep(0.1)
            await history.following.sample_semi_sync()
            if (
                history.following.durable(ep, created.project.settings.durability).sync_commit
                == "on"
            ):
                break
            assert time.monotonic() < deadline, "semi-sync never came back"
        assert await timed_insert(platform, ep, created, 4) < 0.5
        rows = await asyncio.to_thread(sql, platform, ep, created, "SELECT i FROM t ORDER BY i")
        assert [r[0] for r in rows] == [1, 2, 3, 4]


async def test_durability_route_and_metrics(durable: Platform) -> None:
    platform = durable
    who = local_principal(platform.control)
    created = await asyncio.to_thread(platform.control.projects.create, who, name="seen")
    pid, ep = created.project.id, created.endpoints[0].id
    await start(platform, who, pid, ep)
    await asyncio.to_thread(sql, platform, ep, created, "CREATE TABLE t (i INT)")
    seq = await wait_received(platform, ep)
    assert platform.history is not None
    (st,) = [s for s in platform.history.safekeeper.status() if s.endpoint_id == ep]
    from selkie.archive.layout import TimelineRef

    assert await platform.history.safekeeper.wait_archived(
        TimelineRef(pid, st.timeline_id), seq, 10
    )
    _, key = await asyncio.to_thread(
        platform.control.api_keys.create, who, name="metrics", admin=True
    )
    client = TestClient(create_app(platform.control, runtime=platform))
    client.headers["Authorization"] = f"Bearer {key}"
    body = client.get(f"/v1/projects/{pid}/endpoints/{ep}/durability").json()
    assert body["durability"] == "async" and body["streaming"] is True
    assert body["received"] == body["archived"] == f"0-1-{seq}"
    # Asked of the compute's server: an async project's compute does not wait.
    assert body["sync_commit"] == "off" and body["error"] is None
    metrics = client.get("/metrics").text
    for name in (
        "selkie_archive_lag_seconds",
        "selkie_archive_segments_shipped_total",
        "selkie_base_images_total",
        "selkie_restore_seconds_bucket",
        "selkie_safekeeper_streaming",
    ):
        assert name in metrics, name
