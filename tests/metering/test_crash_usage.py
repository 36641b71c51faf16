"""kill -9 of `selkie up` during an active period: usage is never counted twice, and when
the compute died too, its interval ends when it was last seen alive, not at the restart."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.helpers import api_client, mariadbd_processes, selkie_env, selkie_up


def consumption(api: httpx.Client, project_id: str) -> float:
    now = datetime.now(UTC)
    body = api.get(
        "/v1/consumption_history/projects",
        params={
            "from": (now - timedelta(hours=1)).isoformat(),
            "to": (now + timedelta(minutes=1)).isoformat(),
            "granularity": "daily",
            "project_ids": project_id,
        },
    ).json()
    (project,) = body["projects"]
    return float(sum(c["active_time_seconds"] for c in project["consumption"]))


def wait_state(api: httpx.Client, path: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get(path).json()["endpoint"]["current_state"] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never became {state}")


def test_usage_survives_kill_9_of_selkie(tmp_path: Path, template_datadir: Path) -> None:
    env = selkie_env(tmp_path, template_datadir)
    log = tmp_path / "up.log"
    data_dir = Path(env["SELKIE_DATA_DIR"])
    with selkie_up(env, log) as proc:
        api = api_client(env, log)
        kept = api.post("/v1/projects", json={"project": {"name": "kept"}}).json()
        died = api.post("/v1/projects", json={"project": {"name": "died"}}).json()
        paths = {}
        for name, p in (("kept", kept), ("died", died)):
            pid, ep = p["project"]["id"], p["endpoints"][0]["id"]
            paths[name] = (pid, ep, f"/v1/projects/{pid}/endpoints/{ep}")
            api.post(f"{paths[name][2]}/start")
        for name in paths:
            wait_state(api, paths[name][2], "active")
        started = time.monotonic()
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The compute of "died" dies with it (a machine losing power, say).
        os.kill(mariadbd_processes(data_dir)[paths["died"][1]], signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(3)

    with selkie_up(env, log):
        api = api_client(env, log)  # the same key: the log is appended to
        # "kept": its compute survived and was adopted; the interval simply goes on.
        assert api.get(paths["kept"][2]).json()["endpoint"]["current_state"] == "active"
        api.post(f"{paths['kept'][2]}/suspend")
        wait_state(api, paths["kept"][2], "suspended")
        elapsed = time.monotonic() - started
        kept_usage = consumption(api, paths["kept"][0])
        assert abs(kept_usage - elapsed) < 2.0, (kept_usage, elapsed)
        # "died": failed by the reconciler, billed until it was last seen alive (its start
        # or a heartbeat), never up to the restart.
        assert api.get(paths["died"][2]).json()["endpoint"]["current_state"] == "failed"
        died_usage = consumption(api, paths["died"][0])
        assert 0 <= died_usage <= killed_at - started + 0.5, died_usage
        # Nothing counts twice: asking again gives the same figures.
        assert consumption(api, paths["kept"][0]) == kept_usage
        assert consumption(api, paths["died"][0]) == died_usage
