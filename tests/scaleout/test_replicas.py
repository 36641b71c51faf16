"""Two `selkie api` replicas and two `selkie proxy` replicas on one PostgreSQL, with local
computes: clients through both proxies, the scheduler's leader killed and replaced, one
start per wake, and a store that still agrees with the processes."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pymysql
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from selkie.store.tables import OperationRow, UsageEventRow
from tests.helpers import free_port, mariadbd_processes, run, seed_template, selkie_process
from tests.platforms import require_mariadb

pytestmark = pytest.mark.timeout(300)
TOKEN = "internal-" + "t" * 32


def wait_for(check, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def leader_of(apis: dict[str, str]) -> list[str]:
    out = []
    for name, url in apis.items():
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("leader"):
                out.append(name)
        except httpx.TransportError:
            pass
    return out


def test_two_apis_two_proxies_one_postgresql(
    tmp_path: Path, template_datadir: Path, pg_url: str
) -> None:
    require_mariadb()
    data = tmp_path / "data"
    seed_template(template_datadir, data)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SELKIE_")}
    base.update(
        SELKIE_DATABASE_URL=pg_url,
        SELKIE_INTERNAL_TOKEN=TOKEN,
        SELKIE_LOG_LEVEL="info",
        SELKIE_METERING_INTERVAL="5",
    )
    ports = {"api1": free_port(), "api2": free_port(), "proxy1": free_port(), "proxy2": free_port()}
    apis = {n: f"http://127.0.0.1:{ports[n]}" for n in ("api1", "api2")}
    # The internal routes (what proxies ask) on listeners of their own.
    internal_ports = {"api1": free_port(), "api2": free_port()}
    internals = {n: f"http://127.0.0.1:{p}" for n, p in internal_ports.items()}
    engine = create_engine(pg_url)

    def api_env(name: str) -> dict[str, str]:
        return {
            **base,
            "SELKIE_DATA_DIR": str(data),  # one machine: the replicas share the computes' dir
            "SELKIE_API_LISTEN": f"127.0.0.1:{ports[name]}",
            "SELKIE_INTERNAL_LISTEN": f"127.0.0.1:{internal_ports[name]}",
            "SELKIE_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "SELKIE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            # Idle suspends stop computes here: the test follows a cold failover (a leader
            # that adopted the dead one's compute would otherwise freeze it, warm).
            "SELKIE_WARM_SUSPEND_SECONDS": "0",
        }

    def proxy_env(name: str) -> dict[str, str]:
        return {
            **base,
            "SELKIE_DATA_DIR": str(tmp_path / name),
            "SELKIE_PROXY_LISTEN": f"127.0.0.1:{ports[name]}",
            "SELKIE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            # Each proxy prefers a different API replica, and fails over to the other.
            "SELKIE_API_URL": ",".join(
                [internals["api1"], internals["api2"]]
                if name == "proxy1"
                else [internals["api2"], internals["api1"]]
            ),
        }

    with ExitStack() as stack:
        procs = {}
        for name in ("api1", "api2"):
            procs[name] = stack.enter_context(
                selkie_process(
                    "api",
                    api_env(name),
                    tmp_path / f"{name}.log",
                    health_url=apis[name] + "/healthz",
                )
            )
        for name in ("proxy1", "proxy2"):
            procs[name] = stack.enter_context(
                selkie_process("proxy", proxy_env(name), tmp_path / f"{name}.log", port=ports[name])
            )
        stack.callback(
            lambda: [os.kill(pid, signal.SIGKILL) for pid in mariadbd_processes(data).values()]
        )
        wait_for(lambda: len(leader_of(apis)) == 1, 15, "one scheduler leader")
        # The internal routes are on the internal listener only.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        path = "/internal/v1/endpoints/ep-x/roles/r/access"
        assert httpx.get(apis["api1"] + path, headers=auth).status_code == 404
        assert httpx.get(internals["api1"] + path, headers=auth).status_code in (200, 404)
        assert httpx.get(internals["api1"] + path).status_code == 401

        key = run(api_env("api1"), "api-keys", "create", "--name", "t", "--admin").stdout.strip()
        api = httpx.Client(
            base_url=apis["api2"], headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        body = api.post(
            "/v1/projects",
            json={
                "project": {
                    "name": "replicated",
                    "default_endpoint_settings": {"suspend_timeout_seconds": 2},
                }
            },
        )
        assert body.status_code == 201, body.text
        created = body.json()
        pid, ep = created["project"]["id"], created["endpoints"][0]["id"]
        role, password = created["roles"][0]["name"], created["roles"][0]["password"]
        database = created["databases"][0]["name"]

        def state() -> str:
            return str(
                api.get(f"/v1/projects/{pid}/endpoints/{ep}").json()["endpoint"]["current_state"]
            )

        def starts() -> int:
            with Session(engine) as s:
                kinds = (
                    s.execute(
                        select(UsageEventRow.kind)
                        .where(UsageEventRow.endpoint_id == ep)
                        .order_by(UsageEventRow.id)
                    )
                    .scalars()
                    .all()
                )
            # Starts and stops alternate: never two starts in a row.
            assert all(a != b for a, b in itertools.pairwise(kinds)), kinds
            return kinds.count("start")

        def storm(n: int) -> list[str]:
            """n clients at once, half through each proxy; each runs a statement."""
            errors: list[str] = []

            def client(i: int) -> None:
                try:
                    conn = pymysql.connect(
                        host="127.0.0.1",
                        port=ports["proxy1" if i % 2 else "proxy2"],
                        user=f"{ep}.{role}",
                        password=password,
                        database=database,
                        connect_timeout=60,
                        read_timeout=60,
                    )
                    with conn.cursor() as cur:
                        cur.execute("SELECT @@port, CONNECTION_ID()")
                        cur.fetchall()
                    conn.close()
                except Exception as exc:
                    errors.append(repr(exc))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return errors

        wait_for(lambda: state() in ("init", "suspended"), 30, "endpoint at rest")
        before = starts()
        assert storm(40) == []
        assert starts() == before + 1  # 40 clients, two proxies, two APIs: one start
        assert list(mariadbd_processes(data)) == [ep]

        # The leader dies (kill -9): the other replica leads within about 10 s.
        (leader,) = leader_of(apis)
        survivor = "api2" if leader == "api1" else "api1"
        procs[leader].kill()
        procs[leader].wait()
        took = wait_for(lambda: leader_of(apis) == [survivor], 15, "a new leader")
        print(f"leader {leader} killed; {survivor} led after {took:.1f}s")
        api = httpx.Client(
            base_url=apis[survivor], headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

        # The new leader's scheduler suspends the idle endpoint (its compute outlived the
        # replica that started it), and the next storm, through both proxies whose first API
        # may be gone, starts it exactly once more.
        wait_for(lambda: state() == "suspended", 30, "suspended by the new leader")
        wait_for(lambda: not mariadbd_processes(data), 10, "compute stopped")
        assert storm(40) == []
        assert starts() == before + 2
        assert list(mariadbd_processes(data)) == [ep]
        assert state() == "active"

        # Nothing is left half-done: no operation stuck running, states match processes.
        with Session(engine) as s:
            stuck = (
                s.execute(select(OperationRow).where(OperationRow.status == "running"))
                .scalars()
                .all()
            )
        assert stuck == []
        r = api.post(f"/v1/projects/{pid}/endpoints/{ep}/suspend")
        assert r.status_code == 200, r.text
        wait_for(lambda: state() == "suspended" and not mariadbd_processes(data), 30, "suspended")
    engine.dispose()
