"""`selkie safekeeper` as a process of its own: a real `selkie up` (computes on 127.0.0.2,
followed over TCP, durability sync) asks it over HTTP; it follows the computes, archives
their log to the shared archive and serves timelines' binlogs on its own TCP listener."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest

from selkie.archive.local import LocalArchive
from selkie.safekeeper.accounts import ReplicationKey
from selkie.safekeeper.service import Safekeeper
from tests.helpers import (
    api_client,
    connect,
    free_port,
    mariadbd_processes,
    selkie_env,
    selkie_process,
    selkie_up,
)

pytestmark = pytest.mark.slow

PREFIX = "/internal/v1/safekeeper"


async def test_the_safekeeper_api_needs_the_internal_token(tmp_path: Path) -> None:
    from selkie.api.safekeeper import create_safekeeper_app

    token = secrets.token_hex(32)
    safekeeper = Safekeeper(root=tmp_path / "sk", archive=LocalArchive(tmp_path / "archive"))
    app = create_safekeeper_app(safekeeper, ReplicationKey(secrets.token_bytes(32)), token)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sk") as client:
        assert (await client.get("/healthz")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            r = await client.get(PREFIX + "/status", headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["code"] == "unauthorized"
            r = await client.delete(PREFIX + "/follows/ep-x", headers=headers)
            assert r.status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        r = await client.get(PREFIX + "/status", headers=auth)
        assert r.status_code == 200
        assert r.json() == {"timelines": [], "segments_shipped": 0, "bytes_shipped": 0}
        # An id that would name something outside the safekeeper's dir is refused.
        r = await client.get(
            PREFIX + "/projects/p-1/timelines/..%2F..%2Fetc/archived", headers=auth
        )
        assert r.status_code in (404, 422)
        assert not (tmp_path / "etc").exists()


def _wait_operations(api: httpx.Client, project_id: str, ops: list[dict[str, Any]]) -> None:
    for op in ops:
        deadline = time.monotonic() + 120
        while True:
            body = api.get(f"/v1/projects/{project_id}/operations/{op['id']}").json()
            status = body["operation"]["status"]
            if status in ("finished", "skipped"):
                break
            assert status not in ("failed", "cancelled"), body
            assert time.monotonic() < deadline, body
            time.sleep(0.1)


def _timeline_of(env: dict[str, str], branch_id: str) -> str:
    path = env["SELKIE_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        (tl,) = db.execute("SELECT timeline_id FROM branches WHERE id = ?", (branch_id,)).fetchone()
    return str(tl)


def _binlog(port: int, timeline_id: str, key: str) -> str:
    """What `mariadb-binlog --read-from-remote-server` reads of the timeline from the
    start (a non-blocking dump: it ends at the timeline's end)."""
    creds = ReplicationKey(bytes.fromhex(key)).timeline_account(timeline_id)
    out = subprocess.run(
        [
            "mariadb-binlog",
            "--no-defaults",
            "--read-from-remote-server",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--user={creds.user}",
            f"--password={creds.password}",
            "-v",
            "--to-last-log",
            "selkie-bin.000001",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@contextmanager
def _safekeeper(tmp_path: Path, key: str, token: str) -> Iterator[dict[str, str]]:
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELKIE_")}
    env.update(
        SELKIE_DATA_DIR=str(tmp_path / "sk-data"),
        SELKIE_SAFEKEEPER_DIR=str(tmp_path / "sk"),
        SELKIE_ARCHIVE_URL=f"file://{tmp_path / 'archive'}",
        SELKIE_SAFEKEEPER_KEY=key,
        SELKIE_INTERNAL_TOKEN=token,
        SELKIE_SAFEKEEPER_LISTEN=f"127.0.0.1:{free_port()}",
        SELKIE_SAFEKEEPER_API_LISTEN=f"127.0.0.1:{api_port}",
    )
    with selkie_process(
        "safekeeper",
        env,
        tmp_path / "safekeeper.log",
        health_url=f"http://127.0.0.1:{api_port}/healthz",
    ):
        yield env


def test_a_safekeeper_process_keeps_and_serves_a_sync_project(
    tmp_path: Path, template_datadir: Path
) -> None:
    key, token = secrets.token_hex(32), secrets.token_hex(32)
    with _safekeeper(tmp_path, key, token) as sk_env:
        binlog_port = int(sk_env["SELKIE_SAFEKEEPER_LISTEN"].rsplit(":", 1)[1])
        env = selkie_env(tmp_path, template_datadir)
        env.update(
            SELKIE_DATABASE_URL=f"sqlite:///{tmp_path / 'state.db'}",
            SELKIE_ARCHIVE_URL=sk_env["SELKIE_ARCHIVE_URL"],
            SELKIE_SAFEKEEPER_KEY=key,
            SELKIE_INTERNAL_TOKEN=token,
            SELKIE_SAFEKEEPER_URL="http://" + sk_env["SELKIE_SAFEKEEPER_API_LISTEN"],
            SELKIE_SAFEKEEPER_FOLLOW="tcp",
            SELKIE_COMPUTE_BIND_ADDRESS="127.0.0.2",
            # Cold suspends: the compute stops, as it would on another host.
            SELKIE_WARM_SUSPEND_SECONDS="0",
        )
        data_dir = Path(env["SELKIE_DATA_DIR"])
        log = tmp_path / "up.log"
        acked: list[int] = []
        with selkie_up(env, log) as up:
            api = api_client(env, log)
            body = api.post(
                "/v1/projects",
                json={"project": {"name": "sk", "settings": {"durability": "sync"}}},
            ).json()
            pid = body["project"]["id"]
            ep, branch = body["endpoints"][0]["id"], body["branch"]["id"]
            role, db = body["roles"][0], body["databases"][0]["name"]
            user = f"{ep}.{role['name']}"
            conn = connect(env, user, role["password"], db)
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE t (i INT PRIMARY KEY)")
                for i in range(1, 11):
                    cur.execute("INSERT INTO t VALUES (%s)", (i,))
                cur.execute("SELECT @@gtid_binlog_pos")
                ((point,),) = cur.fetchall()
                for i in range(11, 21):
                    cur.execute("INSERT INTO t VALUES (%s)", (i,))
            conn.close()
            # The control plane asked the safekeeper process to follow: it streams (semi-sync).
            sk_api = httpx.Client(
                base_url="http://" + sk_env["SELKIE_SAFEKEEPER_API_LISTEN"],
                headers={"Authorization": f"Bearer {token}"},
            )
            (status,) = [
                s for s in sk_api.get(PREFIX + "/status").json()["timelines"] if s["endpoint_id"]
            ]
            assert status["endpoint_id"] == ep and status["streaming"] and status["semi_sync"]

            r = api.post(f"/v1/projects/{pid}/endpoints/{ep}/suspend")
            assert r.status_code == 200, r.text
            _wait_operations(api, pid, r.json()["operations"])
            assert ep not in mariadbd_processes(data_dir)
            # Suspended: the timeline's history comes from the safekeeper process alone.
            timeline = _timeline_of(env, branch)
            assert status["timeline_id"] == timeline
            out = _binlog(binlog_port, timeline, key)
            assert "CREATE TABLE t" in out and "@1=20" in out, out[-2000:]

            # Resume (a connection wakes it), write more.
            conn = connect(env, user, role["password"], db)
            with conn.cursor() as cur:
                for i in range(21, 31):
                    cur.execute("INSERT INTO t VALUES (%s)", (i,))
                    acked.append(i)

            # A branch at a past point: restored from the archive and the remote tail.
            r = api.post(
                f"/v1/projects/{pid}/branches",
                json={"branch": {"parent_id": branch, "parent_lsn": point}, "endpoints": [{}]},
            )
            assert r.status_code == 201, r.text
            child = r.json()
            _wait_operations(api, pid, child["operations"])
            child_ep = child["endpoints"][0]["id"]
            cconn = connect(env, f"{child_ep}.{role['name']}", role["password"], db)
            with cconn.cursor() as cur:
                cur.execute("SELECT COUNT(*), MAX(i) FROM t")
                assert cur.fetchall() == ((10, 10),)
            cconn.close()

            # Writes under way, then kill -9 of the control plane and the compute, and the
            # compute's datadir lost: the safekeeper process has every acknowledged row.
            stop = threading.Event()

            def writer() -> None:
                i = 100
                try:
                    with conn.cursor() as cur:
                        while not stop.is_set():
                            i += 1
                            cur.execute("INSERT INTO t VALUES (%s)", (i,))
                            acked.append(i)
                except pymysql.MySQLError:
                    pass

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(1.5)
            up.send_signal(signal.SIGKILL)
            computes = mariadbd_processes(data_dir)
            os.kill(computes[ep], signal.SIGKILL)
            up.wait(timeout=10)
            stop.set()
            thread.join(timeout=30)
            assert len(acked) > 30, acked
            for other in computes.values():
                if other != computes[ep]:
                    os.kill(other, signal.SIGKILL)
        shutil.rmtree(data_dir / "branches" / branch)

        with selkie_up(env, log):
            conn = connect(env, user, role["password"], db)
            with conn.cursor() as cur:
                cur.execute("SELECT i FROM t")
                present = {r[0] for r in cur.fetchall()}
            missing = [i for i in acked if i not in present]
            assert missing == [], f"{len(missing)} acknowledged rows lost"
            assert set(range(1, 21)) <= present


async def test_unknown_account_names_cost_one_archive_listing(tmp_path: Path) -> None:
    """A name is looked up before its password is checked: guessing names must not make
    the process list the archive for each guess."""
    from selkie.safekeeper.standalone import SafekeeperProcess

    class Counting(LocalArchive):
        listings = 0

        async def list(self, prefix: str):  # type: ignore[no-untyped-def]
            Counting.listings += 1
            return await super().list(prefix)

    archive = Counting(tmp_path / "archive")
    await archive.put("projects/p-one/timelines/tl-known/wal/x", b"x")
    process = SafekeeperProcess(
        root=tmp_path / "sk", archive=archive, key=ReplicationKey(b"k" * 32), listen="off"
    )
    for i in range(50):
        assert await process.account(f"tl-guess-{i}") is None
    assert Counting.listings == 1
    # A timeline the one listing found is served from it, without another.
    account = await process.account("tl-known")
    assert account is not None and account.ref.project_id == "p-one"
    assert Counting.listings == 1
