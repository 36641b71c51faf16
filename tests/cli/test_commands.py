"""Every `selkie` command against a real `selkie up` (real mariadbd computes behind the
proxy), with ``-o json`` parsed: projects and the context file, endpoints waited for and not,
roles whose reset password logs in through the proxy, databases, operations, connection
strings, `connect` with a recording `mariadb`, yaml output and exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import yaml

from tests.cli.conftest import Cli

pytestmark = pytest.mark.slow


def _project(cli: Cli, name: str) -> dict:  # type: ignore[type-arg]
    created = cli.json("projects", "create", name)
    assert created["project"]["name"] == name and created["connection_uris"]
    return created  # type: ignore[no-any-return]


def test_projects_and_the_context(cli: Cli) -> None:
    created = _project(cli, "ctx-shop")
    pid = created["project"]["id"]
    assert created["roles"][0]["password"]  # the owner's password, shown once

    listed = cli.json("projects", "list")
    assert pid in [p["id"] for p in listed]
    assert [p["id"] for p in cli.json("projects", "list", "--search", "ctx-sh")] == [pid]
    assert cli.json("projects", "get", pid)["name"] == "ctx-shop"

    # No project given and none in the context: a usage error naming the way out.
    context = Path(cli.env["SELKIE_CONTEXT_FILE"])
    context.unlink(missing_ok=True)
    none = cli.run("endpoints", "list")
    assert none.exit_code == 2 and "set-context" in none.stderr

    ctx = cli.json("set-context", "--project-id", pid)
    assert ctx == {"project_id": pid, "context_file": str(context)}
    assert json.loads(context.read_text()) == {"project_id": pid}
    # Commands without --project-id now use it.
    assert cli.json("projects", "get")["id"] == pid
    eps = cli.json("endpoints", "list")
    assert [e["id"] for e in eps] == [e["id"] for e in created["endpoints"]]
    assert cli.json("branches", "list")[0]["id"] == created["branch"]["id"]
    # --project-id wins over the context; `set-context --project` is the neonctl spelling.
    other = _project(cli, "ctx-other")["project"]["id"]
    assert cli.json("branches", "list", "--project-id", other)[0]["project_id"] == other
    cli.ok("set-context", "--project", other)
    assert cli.json("projects", "get")["id"] == other
    # A project that does not exist is refused before it becomes the context.
    refused = cli.run("set-context", "--project-id", "no-such-project")
    assert refused.exit_code == 1 and "not found" in refused.stderr
    assert json.loads(context.read_text()) == {"project_id": other}

    updated = cli.json("projects", "update", other, "--name", "renamed", "--suspend-timeout", "120")
    assert updated["name"] == "renamed"
    assert updated["default_endpoint_settings"]["suspend_timeout_seconds"] == 120

    got = yaml.safe_load(cli.ok("projects", "get", other, "-o", "yaml").stdout)
    assert got["id"] == other and got["name"] == "renamed"
    table = cli.ok("projects", "list").stdout
    assert pid in table and "renamed" in table

    deleted = cli.json("projects", "delete", other)
    assert deleted["id"] == other
    gone = cli.run("projects", "get", other)
    assert gone.exit_code == 1 and "not found" in gone.stderr
    # set-context without a project forgets it.
    cli.ok("set-context")
    assert json.loads(context.read_text()) == {}

    # --set-context at creation.
    made = cli.json("projects", "create", "ctx-third", "--set-context")
    assert json.loads(context.read_text()) == {"project_id": made["project"]["id"]}


def test_exit_codes(cli: Cli) -> None:
    missing = cli.run("projects", "get", "no-such-project")
    assert missing.exit_code == 1 and "not found" in missing.stderr
    missing = cli.run("endpoints", "list", "--project-id", "no-such-project", "-o", "json")
    assert missing.exit_code == 1 and missing.stdout == ""
    assert cli.run("projects", "list", "--bogus").exit_code == 2
    assert cli.run("projects", "list", "-o", "xml").exit_code == 2
    assert cli.run("endpoints", "get", "a", "b", "c").exit_code == 2
    assert cli.run("endpoints", "update", "--project-id", "p", "ep-x").exit_code == 2
    two = cli.run("endpoints", "list", "p1", "--project-id", "p2")
    assert two.exit_code == 2 and "two projects" in two.stderr
    assert cli.run("projects", "list", env={"SELKIE_API_KEY": ""}).exit_code == 2
    bad_key = cli.run("projects", "list", env={"SELKIE_API_KEY": "selkie_wrong"})
    assert bad_key.exit_code == 1 and "API key" in bad_key.stderr
    assert cli.run().exit_code == 2  # no command: help, as a usage error


def test_endpoints_waited_for_and_not(cli: Cli) -> None:
    pid = _project(cli, "eps")["project"]["id"]
    p = ("--project-id", pid)
    dev = cli.json("branches", "create", *p, "--name", "dev", "--no-endpoint")["branch"]
    ep = cli.json("endpoints", "create", *p, "--branch", "dev", "--suspend-timeout", "300")
    assert ep["branch_id"] == dev["id"] and ep["suspend_timeout_seconds"] == 300
    assert ep["current_state"] == "init"
    again = cli.run("endpoints", "create", *p, "--branch", dev["id"])
    assert again.exit_code == 1 and "already has" in again.stderr
    eid = ep["id"]
    assert cli.json("endpoints", "get", *p, eid)["id"] == eid

    updated = cli.json("endpoints", "update", *p, eid, "--suspend-timeout", "600", "--pooler")
    assert updated["suspend_timeout_seconds"] == 600 and updated["pooler_enabled"] is True

    # Waited for: the answer is the endpoint once its compute runs.
    started = cli.json("endpoints", "start", *p, eid)
    assert started["current_state"] == "active" and started["pending_state"] is None
    restarted = cli.json("endpoints", "restart", *p, eid)
    assert restarted["current_state"] == "active"

    # Not waited for: the answer is the request, the operation runs on.
    t0 = time.monotonic()
    suspended = cli.json("endpoints", "suspend", *p, eid, "--no-wait")
    assert time.monotonic() - t0 < 5
    assert suspended["pending_state"] == "suspended"
    ops = cli.json("operations", "list", *p)
    op = next(o for o in ops if o["action"] == "suspend_compute" and o["endpoint_id"] == eid)
    assert ops[0]["created_at"] >= ops[-1]["created_at"]  # newest first
    deadline = time.monotonic() + 60
    while (op := cli.json("operations", "get", *p, op["id"]))["status"] != "finished":
        assert op["status"] in ("scheduling", "running"), op
        assert time.monotonic() < deadline, op
        time.sleep(0.2)
    assert cli.json("endpoints", "get", *p, eid)["current_state"] == "suspended"
    assert len(cli.json("operations", "list", *p, "--limit", "2")) == 2
    # Both forms of an operation's id: positional project (the older form) and the option.
    assert cli.json("operations", "get", pid, op["id"])["id"] == op["id"]

    deleted = cli.json("endpoints", "delete", *p, eid)
    assert deleted["id"] == eid
    assert [e["id"] for e in cli.json("endpoints", "list", *p) if e["branch_id"] == dev["id"]] == []


def test_roles_databases_and_a_reset_password_that_logs_in(cli: Cli) -> None:
    created = _project(cli, "roles")
    pid = created["project"]["id"]
    p = ("--project-id", pid)
    role = cli.json("roles", "create", *p, "app")
    assert role["name"] == "app" and len(role["password"]) >= 16
    table = cli.ok("roles", "create", *p, "viewer").stdout
    assert "password (shown once):" in table
    assert {"app", "viewer"} <= {r["name"] for r in cli.json("roles", "list", *p)}
    listed = yaml.safe_load(cli.ok("roles", "list", *p, "-o", "yaml").stdout)
    assert {r["name"] for r in listed} >= {"app", "viewer"}

    db = cli.json("databases", "create", *p, "appdb", "--owner", "app")
    assert db["name"] == "appdb" and db["owner_name"] == "app"
    assert "appdb" in [d["name"] for d in cli.json("databases", "list", *p, "--branch", "main")]

    reset = cli.json("roles", "reset-password", *p, "app")
    new = reset["password"]
    assert new and new != role["password"]
    conn = cli.json("connection-string", *p, "--role", "app", "--database", "appdb")
    params = conn["connection_parameters"]
    assert conn["uri"].startswith(f"mysql://{params['user']}@") and "appdb" in conn["uri"]
    assert params["role"] == "app" and params["database"] == "appdb"

    def login(password: str) -> int:
        c = pymysql.connect(
            host=params["host"],
            port=params["port"],
            user=params["user"],
            password=password,
            database="appdb",
            connect_timeout=60,
        )
        try:
            with c.cursor() as cur:
                cur.execute("SELECT 6 * 7")
                row = cur.fetchone()
                assert row is not None
                return int(row[0])
        finally:
            c.close()

    # The new password logs in through the proxy (waking the endpoint); the old one not.
    assert login(new) == 42
    with pytest.raises(pymysql.err.OperationalError):
        login(role["password"])

    pooled = cli.ok("connection-string", pid, "--pooled").stdout.strip()
    assert "-pooler." in pooled and pooled.startswith("mysql://")

    assert cli.json("databases", "delete", *p, "appdb")["name"] == "appdb"
    assert "appdb" not in [d["name"] for d in cli.json("databases", "list", *p)]
    assert cli.json("roles", "delete", *p, "viewer")["name"] == "viewer"
    assert "viewer" not in [r["name"] for r in cli.json("roles", "list", *p)]
    gone = cli.run("roles", "delete", *p, "viewer")
    assert gone.exit_code == 1


FAKE_MARIADB = """#!{python}
import json, os, stat, sys
path = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--defaults-extra-file="))
json.dump(
    {{
        "argv": sys.argv,
        "env": dict(os.environ),
        "mode": stat.S_IMODE(os.stat(path).st_mode),
        "file": open(path).read(),
        "path": path,
    }},
    open({record!r}, "w"),
)
sys.exit(3)
"""


def test_connect_keeps_the_password_off_the_command_line(cli: Cli, tmp_path: Path) -> None:
    created = _project(cli, "connect")
    pid = created["project"]["id"]
    password = created["roles"][0]["password"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record.json"
    fake = bin_dir / "mariadb"
    fake.write_text(FAKE_MARIADB.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    result = cli.run(
        "connect",
        "--project-id",
        pid,
        "--",
        "-e",
        "SELECT 1",
        input=password + "\n",
        env={"PATH": path},
    )
    # The client's exit status is the command's.
    assert result.exit_code == 3, result.stderr
    seen = json.loads(record.read_text())
    params = cli.json("connection-string", "--project-id", pid)["connection_parameters"]
    argv = seen["argv"]
    assert argv[1].startswith("--defaults-extra-file=")
    assert f"--host={params['host']}" in argv and f"--port={params['port']}" in argv
    assert f"--user={params['user']}" in argv and f"--database={params['database']}" in argv
    assert argv[-2:] == ["-e", "SELECT 1"]
    assert not any(password in a for a in argv)
    assert "MYSQL_PWD" not in seen["env"]
    assert not any(password in v for v in seen["env"].values())
    # The password went through an option file only this user can read, gone afterwards.
    assert seen["mode"] == stat.S_IRUSR | stat.S_IWUSR
    assert f'password="{password}"' in seen["file"]
    assert not Path(seen["path"]).exists()

    # The real client through the real proxy: the right password runs the statement,
    # a wrong one fails with the client's status.
    ok = cli.run("connect", "--project-id", pid, "--", "-e", "SELECT 1", input=password + "\n")
    assert ok.exit_code == 0, ok.stderr
    bad = cli.run("connect", "--project-id", pid, "--", "-e", "SELECT 1", input="wrong\n")
    assert bad.exit_code != 0


def test_branches_usage_invoice_and_keys(cli: Cli) -> None:
    created = _project(cli, "misc")
    pid = created["project"]["id"]
    main = created["branch"]["id"]
    cli.ok("set-context", "--project-id", pid)
    made = yaml.safe_load(
        cli.ok("branches", "create", "--name", "feature", "--no-wait", "-o", "yaml").stdout
    )
    bid = made["branch"]["id"]
    assert made["branch"]["parent_id"] == main and len(made["endpoints"]) == 1
    assert cli.json("branches", "get", bid)["name"] == "feature"
    assert cli.json("branches", "rename", bid, "feat")["name"] == "feat"
    assert cli.json("branches", "protect", bid)["protected"] is True
    assert cli.run("branches", "delete", bid).exit_code == 1
    cli.ok("branches", "protect", bid, "--off")
    # The older form, project first, still works.
    assert cli.json("branches", "get", pid, bid)["id"] == bid
    diff = cli.json("branches", "schema-diff", bid, "--base", main, "-d", "selkiedb")
    assert diff == {"diff": ""}
    reset = cli.json("branches", "reset", bid)
    assert reset["id"] == bid and reset["parent_id"] == main
    restored = cli.json("branches", "restore", bid, "--source", main)
    assert restored["id"] == bid
    assert cli.json("branches", "set-default", bid)["default"] is True
    assert cli.json("branches", "set-default", main)["default"] is True
    assert cli.json("branches", "delete", bid)["id"] == bid

    used = cli.json("usage")
    assert used["project_id"] == pid and used["quota"]["exceeded"] == []
    assert "compute time" in cli.ok("usage").stdout
    bill = cli.json("invoice")
    assert bill["status"] == "open"
    assert cli.json("invoice", pid, bill["period"])["period"] == bill["period"]
    assert cli.run("invoice", "2026-13").exit_code == 1

    uri = cli.ok("connection-string").stdout.strip()
    assert uri.startswith(f"mysql://{created['endpoints'][0]['id']}.")
    key = cli.json("api-keys", "create", "--name", "script")
    assert key["key"].startswith("selkie_") and key["name"] == "script"
    assert cli.ok("projects", "list", env={"SELKIE_API_KEY": key["key"]}).exit_code == 0


def test_shell_completion() -> None:
    # In a process of its own: completion reads the environment and process-wide state
    # that other tests in this process may have left (it failed once in a full run).
    shown = subprocess.run(
        [sys.executable, "-m", "selkie.cli", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SHELL": "/bin/bash"},
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "complete" in shown.stdout and "_SELKIE_COMPLETE" in shown.stdout


def test_sql_now_and_as_of_a_past_time(cli: Cli) -> None:
    """`selkie sql` runs a statement through the proxy; with --at, a throwaway branch of that
    point answers read-only, says the point, and is deleted afterwards."""
    created = _project(cli, "timetravel")
    pid = created["project"]["id"]
    pw = {"SELKIE_PASSWORD": created["roles"][0]["password"]}
    p = ("--project-id", pid)
    cli.json("sql", *p, "CREATE TABLE tt (i INT PRIMARY KEY)", env=pw)
    assert cli.json("sql", *p, "INSERT INTO tt VALUES (1)", env=pw)["affected"] == 1
    time.sleep(1.5)
    then = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    time.sleep(1.5)
    cli.json("sql", *p, "INSERT INTO tt VALUES (2), (3)", env=pw)

    now = cli.json("sql", *p, "SELECT COUNT(*) AS n FROM tt", env=pw)
    assert now["columns"] == ["n"] and now["rows"] == [[3]]
    past = cli.json("sql", *p, "--at", then, "SELECT COUNT(*) AS n FROM tt", env=pw)
    assert past["rows"] == [[1]], past
    assert past["as_of"].replace("+00:00", "Z").startswith(then[:19]), past
    table = cli.ok("sql", *p, "--at", then, "SELECT i FROM tt", env=pw).stdout
    assert "as of" in table and "1" in table
    # Read-only there, and a bad password is the proxy's refusal; nothing is left behind.
    refused = cli.run("sql", *p, "--at", then, "INSERT INTO tt VALUES (9)", env=pw)
    assert refused.exit_code == 1 and "READ ONLY" in refused.stderr.upper(), refused.stderr
    wrong = cli.run("sql", *p, "SELECT 1", env={"SELKIE_PASSWORD": "not-it"})
    assert wrong.exit_code == 1 and "1045" in wrong.stderr
    names = [b["name"] for b in cli.json("branches", "list", pid)]
    assert not [n for n in names if n.startswith("as-of-")], names
