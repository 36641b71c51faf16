"""`selkie up` as a real process, driven by the `selkie` CLI and curl: create, list, get and
delete a project; the data survives a restart; Ctrl-C stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

SELKIE = [sys.executable, "-m", "selkie.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def selkie_up(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([*SELKIE, "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = env["SELKIE_API_URL"]
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"selkie up exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"selkie up did not answer:\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SELKIE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"selkie {' '.join(args)} failed: {result.stderr}{result.stdout}")
    return result


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    port = free_port()
    e = {k: v for k, v in os.environ.items() if not k.startswith("SELKIE_")}
    e.update(
        SELKIE_DATA_DIR=str(tmp_path / "data"),
        SELKIE_API_LISTEN=f"127.0.0.1:{port}",
        SELKIE_PROXY_LISTEN=f"127.0.0.1:{free_port()}",
        SELKIE_API_URL=f"http://127.0.0.1:{port}",
        COLUMNS="200",
    )
    return e


def test_up_cli_and_curl_and_restart(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with selkie_up(env, log) as proc:
        text = log.read_text()
        key_line = next(line for line in text.splitlines() if "SELKIE_API_KEY=" in line)
        env["SELKIE_API_KEY"] = key_line.split("SELKIE_API_KEY=", 1)[1].strip()
        assert "Created project 'demo'" in text and "mariadb -h 127.0.0.1" in text

        listed = json.loads(run(env, "projects", "list", "-o", "json").stdout)
        assert [p["name"] for p in listed] == ["demo"]

        created = json.loads(run(env, "projects", "create", "shop", "-o", "json").stdout)
        pid = created["project"]["id"]
        assert created["connection_uris"][0]["connection_uri"].startswith("mysql://ep-")
        got = json.loads(run(env, "projects", "get", pid, "-o", "json").stdout)
        assert got["name"] == "shop"
        table = run(env, "projects", "list").stdout
        assert pid in table and "shop" in table

        eps = json.loads(run(env, "endpoints", "list", pid, "-o", "json").stdout)
        assert len(eps) == 1 and eps[0]["current_state"] == "init"
        uri = run(env, "connection-string", pid).stdout.strip()
        assert (
            uri
            == f"mysql://{eps[0]['id']}.selkiedb_owner@127.0.0.1:{env['SELKIE_PROXY_LISTEN'].rsplit(':', 1)[1]}/selkiedb"
        )

        # curl, as a user would.
        curl = subprocess.run(
            [
                "curl",
                "-sf",
                "-H",
                f"Authorization: Bearer {env['SELKIE_API_KEY']}",
                f"{env['SELKIE_API_URL']}/v1/projects/{pid}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert json.loads(curl.stdout)["project"]["id"] == pid
        no_key = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"{env['SELKIE_API_URL']}/v1/projects",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert no_key.stdout == "401"

        # A wrong key is a clear error and a non-zero exit.
        bad = run({**env, "SELKIE_API_KEY": "selkie_wrong"}, "projects", "list", check=False)
        assert bad.returncode == 1 and "invalid or revoked API key" in bad.stderr
        missing = run(env, "projects", "get", "no-such-project", check=False)
        assert missing.returncode == 1 and "not found" in missing.stderr

        # A key made directly on the store (no server involved) works over HTTP at once.
        fresh = run(env, "api-keys", "create", "--name", "script").stdout
        assert fresh.count("\n") == 1 and fresh.startswith("selkie_")
        assert run({**env, "SELKIE_API_KEY": fresh.strip()}, "projects", "list").returncode == 0

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0

    # Restart: the same data, no second demo project, no second first-start key.
    with selkie_up(env, log):
        listed = json.loads(run(env, "projects", "list", "-o", "json").stdout)
        assert sorted(p["name"] for p in listed) == ["demo", "shop"]
        deleted = json.loads(run(env, "projects", "delete", pid, "-o", "json").stdout)
        assert deleted["id"] == pid
        listed = json.loads(run(env, "projects", "list", "-o", "json").stdout)
        assert [p["name"] for p in listed] == ["demo"]
    assert log.read_text().count("SELKIE_API_KEY=") == 1


def test_api_keys_create_for_an_org_and_admin(env: dict[str, str]) -> None:
    admin_key = run(env, "api-keys", "create", "--name", "ops", "--admin").stdout.strip()
    bad = run(env, "api-keys", "create", "--name", "x", "--org", "org-nope", check=False)
    assert bad.returncode == 1 and "not found" in bad.stderr
    assert admin_key.startswith("selkie_")
