"""A compute that hangs (issue 30, item 1): its process held by SIGSTOP keeps its port, and
its clients would wait on it for good. The leader's health checks find it (two unanswered
in a row), mark the endpoint failed naming the cause, stop it (killed: a stopped process
takes no SIGTERM), and the next start serves again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from fastapi.testclient import TestClient

from selkie.api.app import create_app
from selkie.compute.local import LocalDriver
from selkie.control.bootstrap import local_principal
from selkie.model import EndpointState, OperationAction, Principal
from selkie.platform import Platform
from selkie.storage.local import LocalStorage
from tests.conftest import need_service
from tests.platforms import open_platform, request, run_and_close, sql
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


@pytest.fixture
async def proxied(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    async with open_platform(tmp_path, template_datadir, proxy=True) as p:
        yield p


async def test_health_is_shown_where_users_look(proxied: Platform) -> None:
    """What the checks observe, live: the API's endpoint (GET and list) says healthy, then
    unhealthy with the reason once a SIGSTOPped compute is failed; /metrics says 1 then 0;
    a ``health_check_failed`` operation is listed; the next connection through the proxy
    starts the compute again and its health comes back to healthy."""
    p = proxied
    p.health.interval, p.health.timeout = 0.5, 1.0
    who = local_principal(p.control)
    created = await asyncio.to_thread(p.control.projects.create, who, name="seen")
    _, key = await asyncio.to_thread(p.control.api_keys.create, who, name="ops", admin=True)
    api = TestClient(create_app(p.control, runtime=p))
    api.headers["Authorization"] = f"Bearer {key}"
    pid, eid = created.project.id, created.endpoints[0].id
    owner = created.roles[0]
    assert p.proxy is not None
    port = p.proxy.port

    def through_proxy() -> list[Any]:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=port,
            user=f"{eid}.{owner.name}",
            password=owner.password or "",
            database=created.databases[0].name,
            connect_timeout=30,
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return list(cur.fetchall())
        finally:
            conn.close()

    async def get(path: str) -> Any:
        r = await asyncio.to_thread(api.get, path)
        assert r.status_code == 200, r.text
        return r.json() if path.startswith("/v1") else r.text

    async def endpoint_until(health: str) -> dict[str, Any]:
        for _ in range(100):
            ep: dict[str, Any] = (await get(f"/v1/projects/{pid}/endpoints/{eid}"))["endpoint"]
            if ep["health"] == health:
                return ep
            await asyncio.sleep(0.1)
        raise AssertionError(f"health never {health}: {ep}")

    before = await get(f"/v1/projects/{pid}/endpoints/{eid}")
    assert before["endpoint"]["health"] == "unknown"  # no compute yet
    assert before["endpoint"]["health_checked_at"] is None
    assert await asyncio.to_thread(through_proxy) == [(1,)]  # woken by the connection
    ep = await endpoint_until("healthy")
    assert ep["current_state"] == "active" and ep["health_error"] is None
    assert ep["health_checked_at"] is not None
    listed = (await get(f"/v1/projects/{pid}/endpoints"))["endpoints"]
    assert [(e["id"], e["health"]) for e in listed] == [(eid, "healthy")]
    assert f'selkie_endpoint_healthy{{endpoint_id="{eid}"}} 1.0' in await get("/metrics")

    pid_compute = (await p.driver.inspect(eid)).pid
    assert pid_compute is not None
    os.kill(pid_compute, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        ep = await endpoint_until("unhealthy")
        while ep["current_state"] != "failed" and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.1)
            ep = (await get(f"/v1/projects/{pid}/endpoints/{eid}"))["endpoint"]
        took = time.monotonic() - t0
        assert ep["current_state"] == "failed" and ep["health"] == "unhealthy", ep
        assert "health checks" in ep["failure_reason"]
        assert ep["health_error"] == ep["failure_reason"]
        assert took < 8, took
        metrics = await get("/metrics")
        assert f'selkie_endpoint_healthy{{endpoint_id="{eid}"}} 0.0' in metrics
        assert f'selkie_health_checks_failed_total{{endpoint_id="{eid}"}} 2.0' in metrics
        assert f'selkie_compute_unhealthy_total{{endpoint_id="{eid}"}} 1.0' in metrics
        ops = (await get(f"/v1/projects/{pid}/operations"))["operations"]
        failed = [o for o in ops if o["action"] == "health_check_failed"]
        assert len(failed) == 1, ops
        assert failed[0]["endpoint_id"] == eid and failed[0]["status"] == "finished"
        assert failed[0]["payload"]["reason"] == ep["failure_reason"]
        assert failed[0]["payload"]["missed_checks"] == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid_compute, signal.SIGKILL)

    # The next connection starts it again; the checks find it healthy.
    assert await asyncio.to_thread(through_proxy) == [(1,)]
    ep = await endpoint_until("healthy")
    assert ep["current_state"] == "active" and ep["failure_reason"] is None
    assert f'selkie_endpoint_healthy{{endpoint_id="{eid}"}} 1.0' in await get("/metrics")


@contextlib.contextmanager
def on_small_filesystem(datadir: Path, *, spare: int) -> Iterator[Path]:
    """Move a stopped compute's datadir onto a tmpfs of its size plus ``spare`` bytes (the
    same path, owner and mode): a disk of its own that a test can fill."""
    if os.geteuid() != 0:
        need_service("a tmpfs mount", "mounting a filesystem needs root")
    used = sum(f.stat().st_size for f in datadir.rglob("*") if f.is_file())
    st = datadir.stat()
    staged = datadir.with_name(datadir.name + ".staged")
    datadir.rename(staged)
    datadir.mkdir()
    options = f"size={used + spare},mode={st.st_mode & 0o7777:o},uid={st.st_uid},gid={st.st_gid}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(datadir)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        datadir.rmdir()
        staged.rename(datadir)
        need_service("a tmpfs mount", done.stderr.strip() or "mount failed")
    try:
        subprocess.run(["cp", "-a", f"{staged}/.", str(datadir)], check=True)
        yield datadir
    finally:
        subprocess.run(["umount", "-l", str(datadir)], check=False)


def fill(path: Path, *, leave: int) -> None:
    """Take the filesystem's free space down to about ``leave`` bytes (a real file)."""
    free = os.statvfs(path.parent)
    size = free.f_bavail * free.f_frsize - leave
    if size > 0:
        subprocess.run(["fallocate", "-l", str(size), str(path)], check=True)


async def test_a_full_disk_is_named(proxied: Platform) -> None:
    """A compute whose disk fills (its datadir on a small tmpfs): MariaDB aborts in InnoDB
    (error 28, ENOSPC); the endpoint is failed with a reason naming the full disk, and the
    next client gets a clear error 1021 (ER_DISK_FULL) at once rather than a retried wake;
    once room is made, the next connection is served."""
    p = proxied
    p.health.interval, p.health.timeout = 0.5, 1.0  # found sooner; the same path
    assert p.proxy is not None and isinstance(p.storage, LocalStorage)
    who = local_principal(p.control)
    created = await asyncio.to_thread(p.control.projects.create, who, name="full")
    pid, eid = created.project.id, created.endpoints[0].id
    owner = created.roles[0]
    port = p.proxy.port

    def client(*statements: str) -> list[Any]:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=port,
            user=f"{eid}.{owner.name}",
            password=owner.password or "",
            database=created.databases[0].name,
            autocommit=True,
            connect_timeout=30,
            read_timeout=30,
        )
        return run_and_close(conn, *statements)

    await asyncio.to_thread(
        client, "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB)"
    )
    await p.lifecycle.suspend(eid)
    await p.lifecycle.cool(eid)  # stopped, not frozen: its files can move
    assert not (await p.driver.inspect(eid)).running
    datadir = p.storage.datadir(created.endpoints[0].branch_id)
    with on_small_filesystem(datadir, spare=96 * 2**20) as disk:
        fill(disk / "filler-1", leave=16 * 2**20)
        # Rows of 1 MB until the disk is full: the statement that meets it fails.
        with pytest.raises(pymysql.err.OperationalError) as raised:
            await asyncio.to_thread(
                client, *["INSERT INTO t (b) VALUES (REPEAT('x', 1000000))"] * 40
            )
        said = raised.value.args
        for _ in range(100):
            ep = await asyncio.to_thread(p.control.endpoints.get, who, pid, eid)
            if ep.current_state is EndpointState.FAILED:
                break
            await asyncio.sleep(0.1)
        assert ep.current_state is EndpointState.FAILED, (ep.current_state, said)
        assert ep.failure_reason is not None
        assert ep.failure_reason.startswith("the compute's disk is full ("), ep.failure_reason
        assert "28" in ep.failure_reason  # errno 28, ENOSPC, in the server's own words

        # Still full: the next client is told so, at once (the wake is not retried).
        fill(disk / "filler-2", leave=0)
        log = p.driver.error_log(eid) if isinstance(p.driver, LocalDriver) else None
        assert log is not None
        starts = log.read_text().count("] Starting MariaDB ")
        with pytest.raises(pymysql.err.OperationalError) as refused:
            await asyncio.to_thread(client, "SELECT 1")
        code, message = refused.value.args
        assert code == 1021 and "disk is full" in message, refused.value.args
        assert log.read_text().count("] Starting MariaDB ") == starts + 1  # tried once
        ep = await asyncio.to_thread(p.control.endpoints.get, who, pid, eid)
        assert ep.current_state is EndpointState.FAILED
        assert ep.failure_reason and ep.failure_reason.startswith("the compute's disk is full")

        # Room made: served again.
        (disk / "filler-1").unlink()
        (disk / "filler-2").unlink(missing_ok=True)  # none when the server took it all
        assert await asyncio.to_thread(client, "SELECT COUNT(*) > 0 FROM t") == [(1,)]
        await p.driver.stop(eid, timeout=10)
