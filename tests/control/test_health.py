"""A compute that hangs (issue 30, item 1): its process held by SIGSTOP keeps its port, and
its clients would wait on it for good. The leader's health checks find it (two unanswered
in a row), mark the endpoint failed naming the cause, stop it (killed: a stopped process
takes no SIGTERM), and the next start serves again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from selkie.model import EndpointState, OperationAction, Principal
from selkie.platform import Platform
from tests.platforms import request, sql
from tests.proxy.pooler.test_lane_input_limit import other_core_busy


async def test_a_hung_compute_is_failed_stopped_and_started_again(
    platform: Platform, who: Principal
) -> None:
    # Checks every 0.5 s with 1 s to answer (the defaults are 2 s and 2 s): the same path,
    # sooner.
    platform.health.interval, platform.health.timeout = 0.5, 1.0
    created = await asyncio.to_thread(platform.control.projects.create, who, name="hang")
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    pid = (await platform.driver.inspect(ep.id)).pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            ep = platform.lifecycle.get(ep.id)
            if ep.current_state is EndpointState.FAILED:
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - t0
        assert ep.current_state is EndpointState.FAILED, ep.current_state
        assert ep.failure_reason and "health checks" in ep.failure_reason
        # Two checks, each with 1 s to answer: found within seconds, not minutes.
        assert took < 10, took
        for _ in range(100):
            if not (await platform.driver.inspect(ep.id)).running:
                break
            await asyncio.sleep(0.1)
        assert not (await platform.driver.inspect(ep.id)).running
        assert platform.health.unhealthy[ep.id] == 1
        metric = f'selkie_compute_unhealthy_total{{endpoint_id="{ep.id}"}} 1.0'
        assert metric in platform.prometheus().decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    assert ep.current_state is EndpointState.ACTIVE and ep.failure_reason is None
    owner = created.roles[0]
    rows = await asyncio.to_thread(
        sql, platform, ep.id, owner.name, owner.password or "", None, "SELECT 1"
    )
    assert rows == [(1,)]


async def test_a_healthy_compute_under_load_is_left_alone(
    platform: Platform, who: Principal
) -> None:
    """Busy is not hung: checks pass while the compute works (nothing marked, nothing
    stopped), with a process spinning on the other core."""
    created = await asyncio.to_thread(platform.control.projects.create, who, name="busy")
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    owner = created.roles[0]
    with other_core_busy(True):
        work = asyncio.ensure_future(
            asyncio.to_thread(
                sql,
                platform,
                ep.id,
                owner.name,
                owner.password or "",
                None,
                "SELECT BENCHMARK(1500000, MD5('x'))",
            )
        )
        passes = 0
        while not work.done():
            await platform.health.check_all()
            passes += 1
            await asyncio.sleep(0.2)
        await work
    assert passes > platform.health.misses  # enough checks to fail it, were it hung
    assert platform.lifecycle.get(ep.id).current_state is EndpointState.ACTIVE
    assert platform.health.unhealthy[ep.id] == 0
