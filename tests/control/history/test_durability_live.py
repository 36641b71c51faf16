"""A change of a project's durability reaches its running computes within two seconds,
ordered (the safekeeper a semi-sync replica before the server waits for it), and what the
durability route says is what the compute's server does: after async → sync on an active
endpoint, acknowledged commits survive a kill -9 of the compute and the loss of its disk.
A frozen compute takes the change at its thaw; a change that cannot be applied fails its
operation, and the route goes on saying the compute does not wait."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from selkie.api.app import create_app
from selkie.compute.cgroups import Cgroups
from selkie.control.bootstrap import local_principal
from selkie.model import EndpointState, OperationStatus, Principal, SuspendTier
from selkie.platform import Platform
from tests.conftest import need_service
from tests.control.history.conftest import finished, rows, sql, start, started_project
from tests.platforms import open_platform

pytestmark = pytest.mark.slow
# The promise: a durability change is live on the running computes within this long.
APPLIED_WITHIN = 2.0


@asynccontextmanager
async def api(platform: Platform, who: Principal) -> AsyncIterator[httpx.AsyncClient]:
    """The REST API of this platform, in this event loop."""
    _, key = await asyncio.to_thread(platform.control.api_keys.create, who, name="t", admin=True)
    app = create_app(platform.control, runtime=platform)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers={"Authorization": f"Bearer {key}"},
    ) as client:
        yield client


async def set_durability(client: httpx.AsyncClient, pid: str, value: str) -> list[str]:
    """PATCH the project's durability; the ids of the operations that apply it."""
    r = await client.patch(
        f"/v1/projects/{pid}", json={"project": {"settings": {"durability": value}}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["project"]["settings"]["durability"] == value
    ops = r.json()["operations"]
    assert {o["action"] for o in ops} == {"apply_config"}, ops
    return [o["id"] for o in ops]


async def durability(client: httpx.AsyncClient, pid: str, ep: str) -> dict[str, Any]:
    r = await client.get(f"/v1/projects/{pid}/endpoints/{ep}/durability")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def sync_metric(client: httpx.AsyncClient, ep: str) -> str:
    """The endpoint's ``selkie_sync_commit`` sample on /metrics."""
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    prefix = f'selkie_sync_commit{{endpoint_id="{ep}"}} '
    (line,) = [x for x in r.text.splitlines() if x.startswith(prefix)]
    return line[len(prefix) :]


async def server(platform: Platform, ep: str) -> dict[str, str]:
    """The compute's semi-sync variables and status, as its server says."""
    results = await platform.driver.execute(
        ep,
        [
            "SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_master_enabled'",
            "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'",
        ],
    )
    return {str(k): str(v) for rs in results for k, v in rs}


async def until(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> float:
    """Seconds until ``check`` holds; fails after ``within``."""
    t0 = time.monotonic()
    while not await check():
        assert time.monotonic() - t0 < within, f"not within {within:.1f} s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def semi_sync_is(platform: Platform, ep: str, enabled: str, clients: str) -> bool:
    s = await server(platform, ep)
    return (s["rpl_semi_sync_master_enabled"], s["Rpl_semi_sync_master_clients"]) == (
        enabled,
        clients,
    )


async def test_async_to_sync_on_an_active_endpoint_and_back(
    tmp_path: Path, template_datadir: Path
) -> None:
    # Sync means RPO 0 for the compute's disk: the safekeeper is on another one.
    async with open_platform(
        tmp_path, template_datadir, safekeeper_dir=str(tmp_path / "safekeeper")
    ) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await started_project(platform, who, "live", "CREATE TABLE t (i INT PRIMARY KEY)")
        pid, ep, bid = created.project.id, created.endpoints[0].id, created.branch.id
        async with api(platform, who) as client:
            before = await durability(client, pid, ep)
            assert (before["durability"], before["sync_commit"]) == ("async", "off")

            t0 = time.monotonic()
            ops = await set_durability(client, pid, "sync")
            await until(
                lambda: semi_sync_is(platform, ep, "ON", "1"),
                within=APPLIED_WITHIN - (time.monotonic() - t0),
                what="rpl_semi_sync_master_enabled=ON with the safekeeper as semi-sync replica",
            )
            body = await durability(client, pid, ep)
            assert (body["durability"], body["sync_commit"]) == ("sync", "on"), body
            assert body["streaming"] is True
            assert await sync_metric(client, ep) == "1.0"
            await finished(platform, who, pid, ops)
            (st,) = [s for s in platform.history.safekeeper.status() if s.endpoint_id == ep]
            assert st.semi_sync

            # Acknowledged commits, each one by the safekeeper (not timed out)...
            yes = int((await server(platform, ep))["Rpl_semi_sync_master_yes_tx"])
            for i in range(1, 51):
                await asyncio.to_thread(sql, platform, ep, created, f"INSERT INTO t VALUES ({i})")
            after = await server(platform, ep)
            assert int(after["Rpl_semi_sync_master_yes_tx"]) - yes == 50, after
            assert after["Rpl_semi_sync_master_no_tx"] == "0", after

            # ...survive a kill -9 of the compute at once and the loss of its disk.
            compute = (await platform.driver.inspect(ep)).pid
            assert compute is not None
            os.kill(compute, signal.SIGKILL)
            await until(
                lambda: asyncio.to_thread(
                    lambda: platform.lifecycle.get(ep).current_state is EndpointState.FAILED
                ),
                within=10,
                what="the endpoint failed after the kill",
            )
            shutil.rmtree(tmp_path / "data" / "branches" / bid)
            await start(platform, who, pid, ep)
            assert await rows(platform, ep, created) == list(range(1, 51))
            assert platform.history.metrics.restores >= 1  # rebuilt, not the old datadir
            # Started again with the setting in its my.cnf.
            assert (await durability(client, pid, ep))["sync_commit"] == "on"

            # Back to async: the server stops waiting, then the safekeeper follows async.
            t0 = time.monotonic()
            ops = await set_durability(client, pid, "async")
            await until(
                lambda: semi_sync_is(platform, ep, "OFF", "0"),
                within=APPLIED_WITHIN - (time.monotonic() - t0),
                what="rpl_semi_sync_master_enabled=OFF, the safekeeper an async replica",
            )
            body = await durability(client, pid, ep)
            assert (body["durability"], body["sync_commit"]) == ("async", "off"), body
            assert await sync_metric(client, ep) == "0.0"
            await finished(platform, who, pid, ops)
            await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (51)")
            assert (await server(platform, ep))["Rpl_semi_sync_master_no_tx"] == "0"


async def test_a_frozen_compute_takes_the_change_at_its_thaw(
    tmp_path: Path, template_datadir: Path
) -> None:
    if os.geteuid() != 0 or not Cgroups(enabled=True).can_freeze:
        need_service("a cgroup freezer", "warm suspend needs root and a freezer hierarchy")
    async with open_platform(tmp_path, template_datadir) as platform:
        who = local_principal(platform.control)
        created = await started_project(platform, who, "warm", "CREATE TABLE t (i INT PRIMARY KEY)")
        pid, ep = created.project.id, created.endpoints[0].id
        compute = (await platform.driver.inspect(ep)).pid
        await platform.lifecycle.suspend(ep, warm=True)
        assert platform.lifecycle.get(ep).suspend_tier is SuspendTier.WARM
        async with api(platform, who) as client:
            ops = await set_durability(client, pid, "sync")
            await finished(platform, who, pid, ops)  # nothing to do on a frozen compute
            body = await durability(client, pid, ep)
            assert (body["durability"], body["sync_commit"]) == ("sync", None), body

            await platform.lifecycle.start(ep)
            assert (await platform.driver.inspect(ep)).pid == compute  # thawed, not started
            assert await semi_sync_is(platform, ep, "ON", "1")
            assert (await durability(client, pid, ep))["sync_commit"] == "on"
            await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (1)")
            assert (await server(platform, ep))["Rpl_semi_sync_master_yes_tx"] == "1"


async def test_a_change_that_cannot_be_applied_is_not_reported_done(
    tmp_path: Path, template_datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_platform(tmp_path, template_datadir) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await started_project(platform, who, "stuck", "CREATE TABLE t (i INT)")
        pid, ep = created.project.id, created.endpoints[0].id
        # The safekeeper cannot log in to the compute any more (as if it could not reach
        # it): it cannot join as a semi-sync replica.
        monkeypatch.setattr(
            "selkie.control.following.follow_address", lambda *_: tmp_path / "nowhere.sock"
        )
        platform.history.following.sync.join_timeout = 0.5
        platform.runner.max_attempts = 1
        async with api(platform, who) as client:
            (op_id,) = await set_durability(client, pid, "sync")
            await platform.runner.wait_idle()
            op = await asyncio.to_thread(platform.control.operations.get, who, pid, op_id)
            assert op.status is OperationStatus.FAILED
            assert op.error and "did not join" in op.error, op.error
            body = await durability(client, pid, ep)
            assert (body["durability"], body["sync_commit"]) == ("sync", "off"), body
            assert await sync_metric(client, ep) == "0.0"
            assert (await server(platform, ep))["rpl_semi_sync_master_enabled"] == "OFF"
            # Commits go on, asynchronously (and say so).
            await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (1)")
