"""A branch's read pool (issue 28): ``<branch_id>-ro.<role>`` through the proxy spreads new
connections over the branch's read-only computes (least connections), and when one is
SIGKILLed and another SIGSTOPped under load, clients see errors for a few seconds at most
while the pool sends them to the one left, and both are replaced (started again by the
health checks) without a client asking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pymysql
import pytest

from selkie.control.bootstrap import local_principal
from selkie.control.replicas import replica_server_id
from selkie.model import EndpointState
from tests.control.history.conftest import start, started_project
from tests.platforms import open_platform
from tests.proxy.pooler.test_lane_input_limit import other_core_busy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_the_read_pool_spreads_connections_and_replaces_failed_computes(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(tmp_path, template_datadir, proxy=True) as platform:
        assert platform.proxy is not None
        # Checks every 0.5 s with 1 s to answer: the same path as the defaults, sooner.
        platform.health.interval, platform.health.timeout = 0.5, 1.0
        platform.health.replace_every = 2.0
        who = local_principal(platform.control)
        main = await started_project(
            platform,
            who,
            "pool",
            "CREATE TABLE t (i INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1), (2), (3)",
        )
        pid, branch = main.project.id, main.branch.id
        await platform.lifecycle.suspend(main.endpoints[0].id)
        readers = []
        for _ in range(3):
            ep, _ = await asyncio.to_thread(
                platform.control.endpoints.create, who, pid, branch_id=branch, type="read_only"
            )
            await start(platform, who, pid, ep.id)
            readers.append(ep.id)
        by_server = {replica_server_id(ep): ep for ep in readers}
        owner = main.roles[0]
        port = platform.proxy.port

        def connect() -> pymysql.Connection:  # type: ignore[type-arg]
            return pymysql.connect(
                host="127.0.0.1",
                port=port,
                user=f"{branch}-ro.{owner.name}",
                password=owner.password or "",
                database=main.databases[0].name,
                connect_timeout=5,
                read_timeout=3,
                autocommit=True,
            )

        def server_of(conn: pymysql.Connection) -> str:  # type: ignore[type-arg]
            with conn.cursor() as cur:
                cur.execute("SELECT @@server_id, COUNT(*) FROM t")
                server_id, count = cur.fetchone()  # type: ignore[misc]
            assert count == 3
            return by_server[int(server_id)]

        # 60 connections held open: least connections spreads them 20 / 20 / 20.
        conns = [await asyncio.to_thread(connect) for _ in range(60)]
        spread = Counter([await asyncio.to_thread(server_of, c) for c in conns])
        for c in conns:
            c.close()
        assert sorted(spread) == sorted(readers)
        assert all(16 <= n <= 24 for n in spread.values()), spread

        # Clients in a loop; one compute SIGKILLed, another SIGSTOPped.
        killed, stopped, left = readers
        pids = {ep: (await platform.driver.inspect(ep)).pid for ep in (killed, stopped)}
        results: list[tuple[float, str | None, str]] = []
        done = threading.Event()

        def client() -> None:
            while not done.is_set():
                at = time.monotonic()
                try:
                    conn = connect()
                    try:
                        results.append((at, server_of(conn), ""))
                    finally:
                        conn.close()
                except (pymysql.MySQLError, OSError) as exc:
                    results.append((at, None, repr(exc)))
                time.sleep(0.02)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        faulted = replaced = 0.0
        try:
            # A busy loop beside it all: the two cores are shared.
            with other_core_busy(True):
                await asyncio.sleep(1.0)
                faulted = time.monotonic()
                os.kill(pids[killed], signal.SIGKILL)  # type: ignore[arg-type]
                os.kill(pids[stopped], signal.SIGSTOP)  # type: ignore[arg-type]
                while time.monotonic() < faulted + 60:
                    states = [platform.lifecycle.get(ep).current_state for ep in (killed, stopped)]
                    if states == [EndpointState.ACTIVE] * 2 and time.monotonic() > faulted + 5:
                        replaced = time.monotonic()
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2.0)  # clients served by all three again
        finally:
            done.set()
            for t in threads:
                await asyncio.to_thread(t.join, 10)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[stopped], signal.SIGKILL)  # type: ignore[arg-type]
        assert replaced, [platform.lifecycle.get(ep) for ep in (killed, stopped)]
        late_errors = [r for r in results if r[2] and r[0] > faulted + 5]
        assert not late_errors, [(round(r[0] - faulted, 2), r[2]) for r in late_errors][:5]
        # Both replaced computes serve pool clients again.
        served = Counter(r[1] for r in results if not r[2] and r[0] > replaced)
        assert set(served) == {killed, stopped, left}, served
