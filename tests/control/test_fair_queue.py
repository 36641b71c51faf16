"""One tenant cannot stall everyone's operations: a repeated request is the operation already
waiting, a project's queue is capped (429), and the runner takes the oldest waiting
operation of each endpoint, so another tenant's start is claimed whatever is queued."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from selkie.control.base import MAX_QUEUED_PER_PROJECT
from selkie.errors import QuotaExceeded
from selkie.model import OperationAction, OperationStatus, Principal, new_id, utcnow
from selkie.platform import Platform
from selkie.store.tables import OperationRow


async def test_repeated_requests_are_one_operation_and_the_queue_is_capped(
    platform: Platform, who: Principal
) -> None:
    await platform.runner.stop()  # keep everything queued
    created = await asyncio.to_thread(platform.control.projects.create, who, name="noisy")
    pid, ep = created.project.id, created.endpoints[0].id
    ids = set()
    for _ in range(250):
        _, (op,) = await asyncio.to_thread(
            platform.control.endpoints.request, who, pid, ep, OperationAction.SUSPEND_COMPUTE
        )
        ids.add(op.id)
    assert len(ids) == 1
    # Different requests keep their order: start, suspend, start are three operations.
    actions = [OperationAction.START_COMPUTE, OperationAction.SUSPEND_COMPUTE]
    with pytest.raises(QuotaExceeded, match=f"limit {MAX_QUEUED_PER_PROJECT}"):
        for i in range(MAX_QUEUED_PER_PROJECT + 1):
            await asyncio.to_thread(
                platform.control.endpoints.request, who, pid, ep, actions[i % 2]
            )
    with platform.store.read() as s:
        waiting = (
            s.query(OperationRow)
            .filter(OperationRow.project_id == pid)
            .filter(OperationRow.status == OperationStatus.SCHEDULING.value)
            .count()
        )
    assert waiting == MAX_QUEUED_PER_PROJECT


async def test_another_tenants_start_runs_within_a_second(
    platform: Platform, who: Principal
) -> None:
    await platform.runner.stop()
    noisy = await asyncio.to_thread(platform.control.projects.create, who, name="tenant-a")
    quiet = await asyncio.to_thread(platform.control.projects.create, who, name="tenant-b")
    # Tenant A's backlog: 500 operations on 5 endpoints, all older than B's request.
    old = utcnow() - timedelta(minutes=5)
    with platform.store.write() as s:
        for i in range(500):
            s.add(
                OperationRow(
                    id=new_id("op"),
                    project_id=noisy.project.id,
                    branch_id=noisy.branch.id,
                    endpoint_id=f"ep-backlog-{i % 5}",
                    action=OperationAction.APPLY_CONFIG.value,
                    status=OperationStatus.SCHEDULING.value,
                    failures_count=0,
                    total_duration_ms=0,
                    payload={},
                    created_at=old + timedelta(milliseconds=i),
                    updated_at=old,
                )
            )
    _, (op,) = await asyncio.to_thread(
        platform.control.endpoints.request,
        who,
        quiet.project.id,
        quiet.endpoints[0].id,
        OperationAction.START_COMPUTE,
    )
    claimed = await asyncio.to_thread(platform.runner._claim)
    assert op.id in {c.id for c in claimed}
    # One per endpoint of the backlog: the rest of it waits its turn.
    backlog = [c for c in claimed if (c.endpoint_id or "").startswith("ep-backlog")]
    assert len(backlog) == 5
