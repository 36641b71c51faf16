"""Compute features with real mariadbd: roles and databases applied live, resize, branches
(file copy and hot copy), failure reasons from the error log, quotas, cgroup limits."""

from __future__ import annotations

import asyncio
import logging
import re

import pymysql
import pytest

from selkie.compute.mariadb import GIB
from selkie.control import Created
from selkie.errors import ComputeError, QuotaExceeded, public_message, scrub
from selkie.model import EndpointState, OperationAction, OperationStatus, Principal
from selkie.platform import Platform
from selkie.safekeeper.accounts import COMPUTE_ACCOUNT
from tests.platforms import request, sql


async def started(platform: Platform, who: Principal, name: str) -> Created:
    created = await asyncio.to_thread(platform.control.projects.create, who, name=name)
    await request(platform, who, created, OperationAction.START_COMPUTE)
    return created


async def test_roles_and_databases_apply_at_once_on_a_running_compute(
    platform: Platform, who: Principal
) -> None:
    created = await started(platform, who, "live")
    pid, bid, ep = created.project.id, created.branch.id, created.endpoints[0].id
    role, ops = await asyncio.to_thread(platform.control.roles.create, who, pid, bid, name="app")
    _db, _ = await asyncio.to_thread(
        platform.control.databases.create, who, pid, bid, name="shop", owner_name="app"
    )
    await platform.runner.wait_idle()
    assert ops and ops[0].action is OperationAction.APPLY_CONFIG
    rows = await asyncio.to_thread(
        sql,
        platform,
        ep,
        "app",
        role.password or "",
        "shop",
        "CREATE TABLE x (i INT)",
        "INSERT INTO x VALUES (7)",
        "SELECT i FROM x",
    )
    assert rows == [(7,)]
    # A reset password works at once and the old one stops working.
    reset, _ = await asyncio.to_thread(platform.control.roles.reset_password, who, pid, bid, "app")
    await platform.runner.wait_idle()
    assert await asyncio.to_thread(
        sql, platform, ep, "app", reset.password or "", "shop", "SELECT 1"
    ) == [(1,)]
    with pytest.raises(pymysql.err.OperationalError):
        await asyncio.to_thread(sql, platform, ep, "app", role.password or "", "shop", "SELECT 1")
    # Deleting the database and the role removes them from the compute.
    await asyncio.to_thread(platform.control.databases.delete, who, pid, bid, "shop")
    await asyncio.to_thread(platform.control.roles.delete, who, pid, bid, "app")
    await platform.runner.wait_idle()
    owner = created.roles[0]
    dbs = await asyncio.to_thread(
        sql, platform, ep, owner.name, owner.password or "", None, "SHOW DATABASES"
    )
    assert "shop" not in {r[0] for r in dbs}
    users = await platform.driver.execute(
        ep, ["SELECT User FROM mysql.user WHERE Host = '127.0.0.1'"]
    )
    # The store's roles, and Selkie's own safekeeper account (replication only).
    assert {r[0] for r in users[0]} - {COMPUTE_ACCOUNT} == {owner.name}


async def test_changes_while_suspended_apply_at_next_start(
    platform: Platform, who: Principal
) -> None:
    created = await started(platform, who, "later")
    pid, bid, ep = created.project.id, created.branch.id, created.endpoints[0].id
    await request(platform, who, created, OperationAction.SUSPEND_COMPUTE)
    role, _ = await asyncio.to_thread(platform.control.roles.create, who, pid, bid, name="late")
    await asyncio.to_thread(
        platform.control.databases.create, who, pid, bid, name="latedb", owner_name="late"
    )
    await platform.runner.wait_idle()
    await request(platform, who, created, OperationAction.START_COMPUTE)
    assert await asyncio.to_thread(
        sql, platform, ep, "late", role.password or "", "latedb", "SELECT DATABASE()"
    ) == [("latedb",)]


async def test_resize_restarts_with_the_new_size(platform: Platform, who: Principal) -> None:
    created = await started(platform, who, "resize")
    pid, ep = created.project.id, created.endpoints[0].id
    owner = created.roles[0]
    before = await asyncio.to_thread(
        sql,
        platform,
        ep,
        owner.name,
        owner.password or "",
        None,
        "SELECT @@innodb_buffer_pool_size, @@max_connections",
    )
    assert before == [(GIB // 2, 250)]
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.update,
        who,
        pid,
        ep,
        {"autoscaling_limit_min_cu": 1, "autoscaling_limit_max_cu": 1},
    )
    assert [o.action for o in ops] == [OperationAction.RESTART_COMPUTE]
    await platform.runner.wait_idle()
    after = await asyncio.to_thread(
        sql,
        platform,
        ep,
        owner.name,
        owner.password or "",
        None,
        "SELECT @@innodb_buffer_pool_size, @@max_connections",
    )
    assert after == [(2 * GIB, 1000)]


@pytest.mark.parametrize("parent_running", [False, True], ids=["file-copy", "hot-copy"])
async def test_branch_is_a_copy_of_its_parent(
    platform: Platform, who: Principal, parent_running: bool
) -> None:
    created = await started(platform, who, "branchy")
    pid, ep = created.project.id, created.endpoints[0].id
    owner, db = created.roles[0], created.databases[0]
    await asyncio.to_thread(
        sql,
        platform,
        ep,
        owner.name,
        owner.password or "",
        db.name,
        "CREATE TABLE t (i INT PRIMARY KEY)",
        "INSERT INTO t VALUES (1),(2),(3)",
    )
    if not parent_running:
        await request(platform, who, created, OperationAction.SUSPEND_COMPUTE)
    child = await asyncio.to_thread(
        platform.control.branches.create, who, pid, name="child", endpoints=[{"type": "read_write"}]
    )
    await platform.runner.wait_idle()
    child_ep = child.endpoints[0].id
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.request, who, pid, child_ep, OperationAction.START_COMPUTE
    )
    await platform.runner.wait_idle()
    op = await asyncio.to_thread(platform.control.operations.get, who, pid, ops[0].id)
    assert op.status is OperationStatus.FINISHED, op.error
    rows = await asyncio.to_thread(
        sql,
        platform,
        child_ep,
        owner.name,
        owner.password or "",
        db.name,
        "INSERT INTO t VALUES (4)",
        "SELECT COUNT(*) FROM t",
    )
    assert rows == [(4,)]
    if parent_running:
        parent_rows = await asyncio.to_thread(
            sql, platform, ep, owner.name, owner.password or "", db.name, "SELECT COUNT(*) FROM t"
        )
        assert parent_rows == [(3,)]  # the copy is independent of its parent


async def test_a_compute_that_cannot_start_fails_with_its_error_log(
    platform: Platform, who: Principal
) -> None:
    created = await asyncio.to_thread(platform.control.projects.create, who, name="broken")
    await platform.runner.wait_idle()
    datadir = platform.storage.datadir(created.branch.id)
    (datadir / "mysql" / "global_priv.MAD").unlink()
    ep_id = created.endpoints[0].id
    with pytest.raises(Exception, match="privilege tables"):
        await platform.lifecycle.start(ep_id)
    ep = platform.lifecycle.get(ep_id)
    assert ep.current_state is EndpointState.FAILED
    assert ep.failure_reason and "privilege tables" in ep.failure_reason
    assert not (await platform.driver.inspect(ep_id)).running
    # What the tenant reads names no host path (the error log names the server's binary
    # and data dir): the operator's log has them.
    assert "<path>" in ep.failure_reason
    assert not re.search(r"(?<![\w/])/(usr|var|tmp|root|srv|home|run)/", ep.failure_reason)
    assert str(datadir) not in ep.failure_reason


def test_tenant_messages_name_no_host_paths_or_addresses() -> None:
    said = (
        "mariadbd: Can't create/write to file '/var/lib/selkie/x.frm'; datadir /tmp/a/b bad; "
        "[Errno 111] Connect call failed ('10.0.0.5', 3307); 10.0.0.6:3306 and [::1]:3306; "
        "archive file:///srv/archive/k; see PATCH /v1/projects/p-1 or http://h:8083/x"
    )
    assert scrub(said) == (
        "mariadbd: Can't create/write to file '<path>'; datadir <path> bad; "
        "[Errno 111] Connect call failed ('<address>', 3307); <address> and <address>; "
        "archive file://<path>; see PATCH /v1/projects/p-1 or http://h:8083/x"
    )
    assert public_message(ComputeError("datadir /srv/x of ep-1")) == "datadir <path> of ep-1"


async def test_quota_on_active_endpoints(platform: Platform, who: Principal) -> None:
    created = await asyncio.to_thread(
        platform.control.projects.create,
        who,
        name="quota",
        settings={"max_active_endpoints": 1, "max_cu": 1},
    )
    pid = created.project.id
    child = await asyncio.to_thread(
        platform.control.branches.create, who, pid, endpoints=[{"type": "read_write"}]
    )
    await platform.runner.wait_idle()
    await platform.lifecycle.start(created.endpoints[0].id)
    with pytest.raises(QuotaExceeded, match="limit 1"):
        await platform.lifecycle.start(child.endpoints[0].id)
    assert platform.lifecycle.get(child.endpoints[0].id).current_state is EndpointState.INIT
    with pytest.raises(Exception, match="CU"):
        await asyncio.to_thread(
            platform.control.endpoints.update,
            who,
            pid,
            child.endpoints[0].id,
            {"autoscaling_limit_max_cu": 2},
        )
        await platform.lifecycle.start(child.endpoints[0].id)


async def test_cgroup_limits_follow_the_size(
    platform: Platform, who: Principal, caplog: pytest.LogCaptureFixture
) -> None:
    from selkie.compute.cgroups import Cgroups

    platform.driver.cgroups = Cgroups(enabled=True)
    with caplog.at_level(logging.WARNING):
        created = await started(platform, who, "limits")
    limits = platform.driver.cgroups.limits(created.endpoints[0].id)
    if limits:
        memory = limits.get("memory.max") or limits.get("memory.limit_in_bytes")
        assert memory == str(GIB)  # 0.25 CU = 1 GiB
        cpu = limits.get("cpu.max") or limits.get("cpu.cfs_quota_us")
        assert cpu is not None and cpu.startswith("25000")
    else:
        assert "compute CPU/memory limits are off" in caplog.text


async def test_failing_operations_retry_with_backoff_then_fail(
    platform: Platform, who: Principal
) -> None:
    platform.runner.backoff_base = 0.01
    created = await asyncio.to_thread(
        platform.control.projects.create, who, name="retry", settings={"max_active_endpoints": 0}
    )
    pid, ep = created.project.id, created.endpoints[0].id
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.request, who, pid, ep, OperationAction.START_COMPUTE
    )
    await platform.runner.wait_idle()
    op = await asyncio.to_thread(platform.control.operations.get, who, pid, ops[0].id)
    assert op.status is OperationStatus.FAILED
    assert op.failures_count == platform.runner.max_attempts
    assert op.error and "limit 0" in op.error
    # Lift the quota: the next start succeeds.
    await asyncio.to_thread(
        platform.control.projects.update, who, pid, settings={"max_active_endpoints": None}
    )
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.request, who, pid, ep, OperationAction.START_COMPUTE
    )
    await platform.runner.wait_idle()
    op = await asyncio.to_thread(platform.control.operations.get, who, pid, ops[0].id)
    assert op.status is OperationStatus.FINISHED, op.error
