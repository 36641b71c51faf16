"""Computes that wake for their scheduled EVENTs: a suspended compute runs nothing, so
before a suspend its next event is read, and the scheduler's leader starts the endpoint
shortly before it is due; the event runs on the compute's own scheduler, the endpoint
stays up through it and is suspended again after its timeout, with the next event (none,
for a one-time event that has run)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from selkie.control.bootstrap import local_principal
from selkie.model import EndpointState, OperationAction
from selkie.platform import Platform
from tests.control.history.conftest import sql, start

pytestmark = pytest.mark.timeout(120)


async def test_a_suspended_compute_wakes_for_its_event(platform: Platform) -> None:
    who = local_principal(platform.control)
    created = await asyncio.to_thread(platform.control.projects.create, who, name="events")
    pid, ep = created.project.id, created.endpoints[0].id
    await platform.runner.wait_idle()
    await asyncio.to_thread(
        platform.control.endpoints.update, who, pid, ep, {"suspend_timeout_seconds": 2}
    )
    await start(platform, who, pid, ep)
    db = created.databases[0].name
    await asyncio.to_thread(
        sql,
        platform,
        ep,
        created,
        "CREATE TABLE ticks (at DATETIME(3))",
        "CREATE EVENT once ON SCHEDULE AT NOW() + INTERVAL 9 SECOND "
        "DO INSERT INTO ticks VALUES (NOW(3))",
    )
    ((server_on,),) = (await platform.driver.execute(ep, ["SELECT @@event_scheduler"]))[0]
    assert server_on == "ON"
    await platform.lifecycle.suspend(ep)
    suspended = await asyncio.to_thread(platform.control.endpoints.get, who, pid, ep)
    assert suspended.current_state is EndpointState.SUSPENDED
    assert suspended.next_event_at is not None
    assert timedelta(0) < suspended.next_event_at - suspended.suspended_at < timedelta(seconds=10)

    # Nobody connects: the leader starts it for the event, which runs on time.
    deadline = asyncio.get_running_loop().time() + 60
    rows: list = []
    while asyncio.get_running_loop().time() < deadline:
        now = await asyncio.to_thread(platform.control.endpoints.get, who, pid, ep)
        if now.current_state is EndpointState.ACTIVE:
            ((rows),) = await platform.driver.execute(ep, [f"SELECT at FROM `{db}`.ticks"])
            if rows:
                break
        await asyncio.sleep(0.25)
    assert len(rows) == 1, rows
    ran = rows[0][0]
    assert (
        abs(
            (
                ran.replace(tzinfo=None) - suspended.next_event_at.replace(tzinfo=None)
            ).total_seconds()
        )
        < 3
    )
    ops = await asyncio.to_thread(platform.control.operations.list, who, pid, cursor=None, limit=50)
    woke = [
        o
        for o in ops.items
        if o.action is OperationAction.START_COMPUTE
        and o.payload.get("reason") == "scheduled event"
    ]
    assert len(woke) == 1, [(o.action, o.payload) for o in ops.items]

    # Then idle again: suspended after its timeout, with no event left to wake for.
    deadline = asyncio.get_running_loop().time() + 40
    while asyncio.get_running_loop().time() < deadline:
        again = await asyncio.to_thread(platform.control.endpoints.get, who, pid, ep)
        if again.current_state is EndpointState.SUSPENDED:
            break
        await asyncio.sleep(0.25)
    assert again.current_state is EndpointState.SUSPENDED
    assert again.next_event_at is None
