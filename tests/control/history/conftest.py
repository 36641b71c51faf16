"""Fixtures for durable storage: a platform whose archive is a local directory or a real
S3 server (SeaweedFS), and helpers to write rows and wait for the safekeeper."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.model import OperationAction, OperationStatus, Principal
from selkie.platform import Platform
from tests.conftest import s3_options
from tests.platforms import open_platform
from tests.platforms import sql as compute_sql
from tests.seaweedfs import S3Server


def archive_env(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, object]:
    if kind == "file":
        return {"archive_url": f"file://{tmp_path / 'archive'}"}
    server: S3Server = request.getfixturevalue("s3_server")
    opts = s3_options(server)
    return {
        "archive_url": server.url(f"pitr-{secrets.token_hex(4)}"),
        "aws": {
            "AWS_ENDPOINT_URL_S3": opts["endpoint"],
            "AWS_REGION": opts["region"],
            "AWS_ACCESS_KEY_ID": opts["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": opts["secret_access_key"],
        },
    }


@pytest.fixture(params=["file", "s3"])
async def durable(
    request: pytest.FixtureRequest, tmp_path: Path, template_datadir: Path
) -> AsyncIterator[Platform]:
    """A platform with durable storage on each archive backend."""
    env = archive_env(request.param, tmp_path, request)
    aws = env.pop("aws", None)
    async with open_platform(tmp_path, template_datadir, aws=aws, **env) as p:  # type: ignore[arg-type]
        yield p


@pytest.fixture
def who_d(durable: Platform) -> Principal:
    return local_principal(durable.control)


def sql(platform: Platform, endpoint_id: str, created: Created, *statements: str) -> list[tuple]:  # type: ignore[type-arg]
    """Run statements on the endpoint's compute as the project owner; the last one's rows."""
    owner = created.roles[0]
    return compute_sql(
        platform,
        endpoint_id,
        owner.name,
        owner.password or "",
        created.databases[0].name,
        *statements,
    )


async def compute_position(platform: Platform, endpoint_id: str) -> int:
    ((row,),) = await platform.driver.execute(endpoint_id, ["SELECT @@gtid_binlog_pos"])
    return int(str(row[0]).rsplit("-", 1)[1]) if row[0] else 0


async def wait_received(platform: Platform, endpoint_id: str, timeout: float = 10) -> int:
    """Until the safekeeper has everything the compute committed; returns the position."""
    assert platform.history is not None
    want = await compute_position(platform, endpoint_id)
    deadline = time.monotonic() + timeout
    while True:
        done = [
            s
            for s in platform.history.safekeeper.status()
            if s.endpoint_id == endpoint_id and s.last_seq >= want
        ]
        if done:
            return want
        assert time.monotonic() < deadline, platform.history.safekeeper.status()
        await asyncio.sleep(0.02)


async def finished(platform: Platform, who: Principal, project_id: str, op_ids: list[str]) -> None:
    await platform.runner.wait_idle(timeout=120)
    for op_id in op_ids:
        op = await asyncio.to_thread(platform.control.operations.get, who, project_id, op_id)
        assert op.status is OperationStatus.FINISHED, (op.action, op.error)


async def start(platform: Platform, who: Principal, project_id: str, endpoint_id: str) -> None:
    """Start the endpoint through the API's operation, and wait for it."""
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.request,
        who,
        project_id,
        endpoint_id,
        OperationAction.START_COMPUTE,
    )
    await finished(platform, who, project_id, [o.id for o in ops])


async def rows(platform: Platform, endpoint_id: str, created: Created) -> list[int]:
    got = await asyncio.to_thread(sql, platform, endpoint_id, created, "SELECT i FROM t ORDER BY i")
    return [r[0] for r in got]


async def branch_at(
    platform: Platform, who: Principal, created: Created, name: str, **point: Any
) -> Created:
    """A branch of the project's main branch at a point (parent_timestamp= or
    parent_lsn=), with a running endpoint."""
    pid = created.project.id
    child = await asyncio.to_thread(
        platform.control.branches.create,
        who,
        pid,
        name=name,
        endpoints=[{"type": "read_write"}],
        **point,
    )
    await finished(platform, who, pid, [o.id for o in child.operations])
    await start(platform, who, pid, child.endpoints[0].id)
    return child


async def started_project(
    platform: Platform, who: Principal, name: str, *statements: str, **options: Any
) -> Created:
    """A new project (``options``: its settings), its endpoint started, ``statements`` run
    there as its owner and received by the safekeeper."""
    created = await asyncio.to_thread(platform.control.projects.create, who, name=name, **options)
    ep = created.endpoints[0].id
    await start(platform, who, created.project.id, ep)
    if statements:
        await asyncio.to_thread(sql, platform, ep, created, *statements)
        await wait_received(platform, ep)
    return created
