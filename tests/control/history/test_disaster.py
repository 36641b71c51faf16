"""Disaster recovery: writes under load, kill -9 of `selkie up` and of every compute, the
data dir deleted (the state store and the archive kept, as on another machine), then a
new start serves the endpoint again from the archive. With durability=sync every
acknowledged row is there (also when the project was switched to sync while its endpoint
ran); with async, only rows acknowledged in the last moments (the archive lag) may be
missing."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.helpers import (
    api_client,
    connect,
    free_port,
    mariadbd_processes,
    selkie_env,
    selkie_up,
)

pytestmark = pytest.mark.slow
# The async archive lag this test tolerates for rows acknowledged just before the kill (the
# target is 1 s at p99; a loaded CI machine gets some slack).
ASYNC_LAG_BOUND = 2.0
# How soon a durability change is live on a running compute.
APPLIED_WITHIN = 2.0


def switch_to_sync(api: Any, project_id: str, endpoint_id: str) -> None:
    """Make the running project sync through the API, and wait until its compute's
    commits wait for the safekeeper (as the endpoint's durability route says)."""
    r = api.patch(
        f"/v1/projects/{project_id}", json={"project": {"settings": {"durability": "sync"}}}
    )
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    while True:
        body = api.get(f"/v1/projects/{project_id}/endpoints/{endpoint_id}/durability").json()
        if body["sync_commit"] == "on":
            break
        assert time.monotonic() - t0 < APPLIED_WITHIN, body
        time.sleep(0.02)


# Created sync is tested over TCP (the harder path); "switched_to_sync" over the socket.
@pytest.mark.parametrize("durability", ["async", "switched_to_sync", "sync_over_tcp"])
def test_a_lost_data_dir_is_rebuilt_from_the_archive(
    tmp_path: Path, template_datadir: Path, durability: str
) -> None:
    env = selkie_env(tmp_path, template_datadir)
    env["SELKIE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'state' / 'selkie.db'}"
    env["SELKIE_ARCHIVE_URL"] = f"file://{tmp_path / 'archive'}"
    if durability == "sync_over_tcp":
        # The compute as on another host: another address, and the safekeeper follows it
        # over TCP as its replication account, never through its socket.
        env["SELKIE_COMPUTE_BIND_ADDRESS"] = "127.0.0.2"
        env["SELKIE_SAFEKEEPER_FOLLOW"] = "tcp"
        # And the safekeeper serves its binlogs on a TCP listener of its own.
        env["SELKIE_SAFEKEEPER_LISTEN"] = f"127.0.0.1:{free_port()}"
    sync = durability != "async"
    if sync:
        # Sync means: acknowledged once fsynced by the safekeeper, which lives on another
        # disk than the compute's (here: outside the data dir that is lost).
        env["SELKIE_SAFEKEEPER_DIR"] = str(tmp_path / "safekeeper")
    data_dir = Path(env["SELKIE_DATA_DIR"])
    log = tmp_path / "up.log"
    acked: list[tuple[int, float]] = []
    with selkie_up(env, log) as proc:
        api = api_client(env, log)
        created = "async" if durability in ("async", "switched_to_sync") else "sync"
        body = api.post(
            "/v1/projects",
            json={"project": {"name": "dr", "settings": {"durability": created}}},
        ).json()
        ep = body["endpoints"][0]["id"]
        role = body["roles"][0]
        db = body["databases"][0]["name"]
        user = f"{ep}.{role['name']}"
        conn = connect(env, user, role["password"], db)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (i INT PRIMARY KEY, pad VARCHAR(200))")
        if durability == "switched_to_sync":
            # The endpoint is active (the connection woke it): the change reaches it live.
            switch_to_sync(api, body["project"]["id"], ep)
        stop = threading.Event()

        def writer() -> None:
            i = 0
            try:
                with conn.cursor() as cur:
                    while not stop.is_set():
                        i += 1
                        cur.execute("INSERT INTO t VALUES (%s, REPEAT('x', 200))", (i,))
                        acked.append((i, time.monotonic()))
            except pymysql.MySQLError:
                pass

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(2.5)
        proc.send_signal(signal.SIGKILL)
        for pid in mariadbd_processes(data_dir).values():
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=10)
        stop.set()
        thread.join(timeout=30)
        assert len(acked) > 50, f"only {len(acked)} rows were written"
    shutil.rmtree(data_dir)

    with selkie_up(env, log):
        # The first connection wakes the endpoint: its branch is rebuilt from the archive
        # while the proxy holds the client.
        conn = connect(env, user, role["password"], db)
        with conn.cursor() as cur:
            cur.execute("SELECT i FROM t")
            present = {r[0] for r in cur.fetchall()}
            # And it goes on from there.
            cur.execute("INSERT INTO t VALUES (1000000, 'after')")
        missing = [(i, at) for i, at in acked if i not in present]
        if sync:
            assert missing == [], f"{len(missing)} acknowledged rows lost"
        else:
            late = [i for i, at in missing if at < killed_at - ASYNC_LAG_BOUND]
            assert late == [], f"rows acknowledged long before the kill were lost: {late[:10]}"
        # Nothing that was never acknowledged but the one in flight appears.
        assert max(present - {1000000}) <= max(i for i, _ in acked) + 1
