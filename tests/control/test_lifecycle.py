"""Endpoints through their whole life with real mariadbd computes."""

from __future__ import annotations

import asyncio
import os
import signal

import pymysql
import pytest

from selkie.control import Created
from selkie.model import EndpointState, OperationAction, Principal
from selkie.platform import Platform
from tests.platforms import platform_address, request


def connect(
    platform: Platform,
    created: Created,
    *,
    password: str | None = None,
    database: str | None = None,
) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    ep = platform.lifecycle.get(created.endpoints[0].id)
    assert ep.current_state is EndpointState.ACTIVE
    info_port = int(platform_address(platform, ep.id).rsplit(":", 1)[1])
    return pymysql.connect(
        host="127.0.0.1",
        port=info_port,
        user=created.roles[0].name,
        password=password or created.roles[0].password or "",
        database=database or created.databases[0].name,
        autocommit=True,
    )


async def test_start_use_suspend_start_keeps_data(platform: Platform, who: Principal) -> None:
    created = await asyncio.to_thread(platform.control.projects.create, who, name="life")
    await platform.runner.wait_idle()
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    assert ep.current_state is EndpointState.ACTIVE and ep.started_at is not None
    assert ep.pending_state is None and ep.last_active is not None
    pid = (await platform.driver.inspect(ep.id)).pid
    assert pid is not None

    def write() -> None:
        conn = connect(platform, created)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
            cur.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
            cur.execute("SELECT CURRENT_USER(), @@port")
            user, _port = cur.fetchone()
            assert user == f"{created.roles[0].name}@127.0.0.1"  # TCP, this machine only
        conn.close()

    await asyncio.to_thread(write)
    ep = await request(platform, who, created, OperationAction.SUSPEND_COMPUTE)
    assert ep.current_state is EndpointState.SUSPENDED and ep.suspended_at is not None
    assert not (await platform.driver.inspect(ep.id)).running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    assert ep.current_state is EndpointState.ACTIVE

    def read() -> list[tuple[int, str]]:
        conn = connect(platform, created)
        with conn.cursor() as cur:
            cur.execute("SELECT id, v FROM t ORDER BY id")
            rows = list(cur.fetchall())
        conn.close()
        return rows

    assert await asyncio.to_thread(read) == [(1, "one"), (2, "two")]


async def test_wrong_password_and_other_databases_are_refused(
    platform: Platform, who: Principal
) -> None:
    created = await asyncio.to_thread(platform.control.projects.create, who, name="auth")
    await request(platform, who, created, OperationAction.START_COMPUTE)
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(connect, platform, created, password="wrong")
    assert err.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(connect, platform, created, database="mysql")
    assert err.value.args[0] == 1044


async def test_compute_killed_is_marked_failed_then_restarts(
    platform: Platform, who: Principal
) -> None:
    created = await asyncio.to_thread(platform.control.projects.create, who, name="kill")
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    pid = (await platform.driver.inspect(ep.id)).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(300):
        ep = platform.lifecycle.get(ep.id)
        if ep.current_state is EndpointState.FAILED:
            break
        await asyncio.sleep(0.01)
    assert ep.current_state is EndpointState.FAILED
    assert ep.failure_reason and "SIGKILL" in ep.failure_reason
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    assert ep.current_state is EndpointState.ACTIVE and ep.failure_reason is None
