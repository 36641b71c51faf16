"""Crashes: of a compute in the middle of a write stream, and of `selkie up` itself in the
middle of starts and suspends. Nothing acknowledged is lost; nothing is left unaccounted."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pymysql

from selkie.model import EndpointState, OperationAction, Principal
from selkie.platform import Platform
from tests.helpers import api_client, mariadbd_processes, selkie_env, selkie_up
from tests.platforms import platform_address, request


async def test_kill_9_during_inserts_loses_no_acknowledged_row(
    platform: Platform, who: Principal
) -> None:
    created = await asyncio.to_thread(platform.control.projects.create, who, name="durable")
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    role, db = created.roles[0], created.databases[0]
    port = int(platform_address(platform, ep.id).rsplit(":", 1)[1])

    def conn() -> pymysql.connections.Connection:  # type: ignore[type-arg]
        return pymysql.connect(
            host="127.0.0.1",
            port=port,
            user=role.name,
            password=role.password or "",
            database=db.name,
            autocommit=True,
        )

    c = await asyncio.to_thread(conn)
    with c.cursor() as cur:
        cur.execute("CREATE TABLE acked (id INT PRIMARY KEY, pad VARCHAR(200))")
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        try:
            with c.cursor() as cur:
                while not stop.is_set():
                    i += 1
                    cur.execute("INSERT INTO acked VALUES (%s, REPEAT('x', 200))", (i,))
                    acked.append(i)  # only after the server said OK
        except pymysql.MySQLError:
            pass

    thread = threading.Thread(target=writer)
    thread.start()
    while len(acked) < 300:
        await asyncio.sleep(0.005)
    pid = (await platform.driver.inspect(ep.id)).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()

    for _ in range(500):
        if platform.lifecycle.get(ep.id).current_state is EndpointState.FAILED:
            break
        await asyncio.sleep(0.01)
    ep = await request(platform, who, created, OperationAction.START_COMPUTE)
    port = int(platform_address(platform, ep.id).rsplit(":", 1)[1])
    c2 = await asyncio.to_thread(conn)
    with c2.cursor() as cur:
        cur.execute("SELECT id FROM acked")
        present = {row[0] for row in cur.fetchall()}
    assert set(acked) <= present
    assert len(acked) >= 300


def test_kill_9_of_selkie_up_leaves_nothing_unaccounted(
    tmp_path: Path, template_datadir: Path
) -> None:
    env = selkie_env(tmp_path, template_datadir)
    log = tmp_path / "up.log"
    data_dir = Path(env["SELKIE_DATA_DIR"])
    with selkie_up(env, log) as proc:
        api = api_client(env, log)
        projects = [
            api.post("/v1/projects", json={"project": {"name": f"p{i}"}}).json() for i in range(4)
        ]
        eps = [(p["project"]["id"], p["endpoints"][0]["id"]) for p in projects]
        for pid, ep in eps:
            api.post(f"/v1/projects/{pid}/endpoints/{ep}/start")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [
                api.get(f"/v1/projects/{p}/endpoints/{e}").json()["endpoint"]["current_state"]
                for p, e in eps
            ]
            if states.count("active") >= 3:
                break
            time.sleep(0.05)
        # Churn: suspend two, restart one, start again — and kill -9 mid-flight.
        api.post(f"/v1/projects/{eps[0][0]}/endpoints/{eps[0][1]}/suspend")
        api.post(f"/v1/projects/{eps[1][0]}/endpoints/{eps[1][1]}/suspend")
        api.post(f"/v1/projects/{eps[2][0]}/endpoints/{eps[2][1]}/restart")
        api.post(f"/v1/projects/{eps[1][0]}/endpoints/{eps[1][1]}/start")
        time.sleep(0.15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        survivors = mariadbd_processes(data_dir)
        assert survivors, "no compute survived the kill: the test exercised nothing"

    with selkie_up(env, log):
        deadline = time.monotonic() + 90
        while True:
            ops = [
                o
                for p, _ in eps
                for o in api.get(f"/v1/projects/{p}/operations").json()["operations"]
            ]
            if (
                all(o["status"] in ("finished", "failed") for o in ops)
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        assert [o for o in ops if o["status"] not in ("finished", "failed")] == []
        running = mariadbd_processes(data_dir)
        for pid, ep in eps:
            state = api.get(f"/v1/projects/{pid}/endpoints/{ep}").json()["endpoint"][
                "current_state"
            ]
            assert state in ("active", "suspended", "failed", "init"), (ep, state)
            assert (state == "active") == (ep in running), (ep, state, running)
        assert set(running) <= {ep for _, ep in eps}
    # A clean stop of selkie up suspends every compute: nothing is left behind.
    assert mariadbd_processes(data_dir) == {}
