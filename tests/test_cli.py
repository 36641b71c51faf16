"""`selkie up` as a real process, driven by the `selkie` CLI and curl: create, list, get and
delete a project; the data survives a restart; Ctrl-C stops cleanly."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import first_key, mariadbd_processes, run, selkie_env, selkie_up


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return selkie_env(tmp_path)


def test_up_cli_and_curl_and_restart(env: dict[str, str], tmp_path: Path) -> None:
    # An empty data dir, as on a fresh machine: `selkie up` makes its own template datadir
    # (every other test starts from a copy of the session's).
    log = tmp_path / "up.log"
    with selkie_up(env, log) as proc:
        text = log.read_text()
        env["SELKIE_API_KEY"] = first_key(log)
        assert "Created project 'demo'" in text and "mariadb -h 127.0.0.1" in text
        # The printed connection command works as printed: it wakes the demo endpoint.
        connect = next(x for x in text.splitlines() if "connect:" in x).split("connect:", 1)[1]
        out = subprocess.run(
            [*shlex.split(connect), "--batch", "--skip-column-names", "-e", "SELECT 6*7"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "42"

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

        used = json.loads(run(env, "usage", pid, "-o", "json").stdout)
        assert used["project_id"] == pid and used["active_time_seconds"] == 0
        assert used["plan"] == "default" and used["quota"]["exceeded"] == []
        table = run(env, "usage", pid).stdout
        assert "compute time" in table and "storage now" in table
        bill = json.loads(run(env, "invoice", pid, "-o", "json").stdout)
        assert bill["status"] == "open" and bill["total"] == "0.00"
        assert "total" in run(env, "invoice", pid).stdout
        bad = run(env, "invoice", pid, "2026-13", check=False)
        assert bad.returncode != 0 and "2026-13" in bad.stderr

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
    with selkie_up(env, log) as proc:
        listed = json.loads(run(env, "projects", "list", "-o", "json").stdout)
        assert sorted(p["name"] for p in listed) == ["demo", "shop"]
        deleted = json.loads(run(env, "projects", "delete", pid, "-o", "json").stdout)
        assert deleted["id"] == pid
        listed = json.loads(run(env, "projects", "list", "-o", "json").stdout)
        assert [p["name"] for p in listed] == ["demo"]
        # Wake the demo endpoint, then stop with SIGTERM (what a service manager sends):
        # the computes are suspended before the process exits.
        out = subprocess.run(
            [*shlex.split(connect), "-e", "SELECT 1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        data_dir = Path(env["SELKIE_DATA_DIR"])
        assert mariadbd_processes(data_dir)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert mariadbd_processes(data_dir) == {}
    assert log.read_text().count("SELKIE_API_KEY=") == 1


def test_api_keys_create_for_an_org_and_admin(env: dict[str, str]) -> None:
    admin_key = run(env, "api-keys", "create", "--name", "ops", "--admin").stdout.strip()
    bad = run(env, "api-keys", "create", "--name", "x", "--org", "org-nope", check=False)
    assert bad.returncode == 1 and "not found" in bad.stderr
    assert admin_key.startswith("selkie_")


def test_branches_from_the_cli(tmp_path: Path, template_datadir: Path) -> None:
    env = selkie_env(tmp_path, template_datadir)
    log = tmp_path / "up.log"
    with selkie_up(env, log) as proc:
        env["SELKIE_API_KEY"] = first_key(log)
        pid = json.loads(run(env, "projects", "list", "-o", "json").stdout)[0]["id"]
        main = json.loads(run(env, "branches", "list", pid, "-o", "json").stdout)[0]
        assert main["default"] is True and main["parent_id"] is None
        made = json.loads(run(env, "branches", "create", pid, "--name", "dev", "-o", "json").stdout)
        dev = made["branch"]["id"]
        assert made["branch"]["parent_id"] == main["id"] and len(made["endpoints"]) == 1
        assert "dev" in run(env, "branches", "list", pid).stdout
        renamed = json.loads(
            run(env, "branches", "rename", pid, dev, "feature", "-o", "json").stdout
        )
        assert renamed["name"] == "feature"
        assert json.loads(run(env, "branches", "protect", pid, dev, "-o", "json").stdout)[
            "protected"
        ]
        refused = run(env, "branches", "delete", pid, dev, check=False)
        assert refused.returncode == 1 and "protected" in refused.stderr
        run(env, "branches", "protect", pid, dev, "--off")
        # Expiry: --expires-in on create, `expire` to change it or --never to keep it.
        made = json.loads(
            run(
                env,
                "branches",
                "create",
                pid,
                "--name",
                "pr-1",
                "--expires-in",
                "1d",
                "-o",
                "json",
                "--no-endpoint",
            ).stdout
        )
        left = datetime.fromisoformat(made["branch"]["expires_at"]) - datetime.now(UTC)
        assert timedelta(hours=23, minutes=59) < left <= timedelta(days=1)
        pr = made["branch"]["id"]
        assert "expires" not in run(env, "branches", "expire", pid, pr, "--never").stderr
        assert (
            json.loads(run(env, "branches", "get", pid, pr, "-o", "json").stdout)["expires_at"]
            is None
        )
        at = json.loads(
            run(
                env,
                "branches",
                "expire",
                pid,
                pr,
                "--expires-at",
                "2099-01-01T00:00:00Z",
                "-o",
                "json",
            ).stdout
        )
        assert at["expires_at"].startswith("2099-01-01T00:00:00")
        bad = run(env, "branches", "expire", pid, pr, "--expires-in", "soon", check=False)
        assert bad.returncode == 2 and "--expires-in" in bad.stderr
        diff = run(env, "branches", "schema-diff", pid, dev, "--base", main["id"], "-d", "selkiedb")
        assert diff.stdout.strip() == "(no difference)"
        reset = json.loads(run(env, "branches", "reset", pid, dev, "-o", "json").stdout)
        assert reset["id"] == dev
        assert json.loads(run(env, "branches", "get", pid, dev, "-o", "json").stdout)["id"] == dev
        default = json.loads(run(env, "branches", "set-default", pid, dev, "-o", "json").stdout)
        assert default["default"] is True
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
