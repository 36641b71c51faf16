"""The local driver's process identity checks and config rendering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from selkie.compute.local import LocalDriver
from selkie.compute.mariadb import (
    GIB,
    MIB,
    DatabaseSpec,
    RoleSpec,
    Sizing,
    render_config,
    sync_statements,
)
from selkie.compute.procs import proc_start_time


def test_a_recycled_pid_is_not_mistaken_for_a_compute(tmp_path: Path) -> None:
    driver = LocalDriver(data_dir=tmp_path)
    run_dir = driver.run_dir("ep-x")
    run_dir.mkdir(parents=True)
    # A live process that is not mariadbd, recorded as if it were the compute.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = proc_start_time(sleeper.pid)
        record = {
            "endpoint_id": "ep-x",
            "pid": sleeper.pid,
            "start_time": start,
            "port": 1,
            "socket": str(tmp_path / "s"),
        }
        (run_dir / "compute.json").write_text(json.dumps(record))
        assert driver.records.recorded_alive("ep-x") is None
        assert driver.records.is_ours(os.getpid(), "ep-x") is False
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc_start_time(sleeper.pid) is None


def test_sizing_and_config() -> None:
    quarter = Sizing.for_cu(0.25)
    assert (quarter.memory_bytes, quarter.buffer_pool_bytes) == (GIB, 512 * MIB)
    assert (quarter.max_connections, quarter.thread_pool_size) == (250, 1)
    two = Sizing.for_cu(2)
    assert (two.buffer_pool_bytes, two.max_connections, two.thread_pool_size) == (4 * GIB, 2000, 2)
    cnf = render_config(
        sizing=quarter,
        datadir=Path("/d"),
        socket=Path("/s"),
        port=5,
        pid_file=Path("/p"),
        error_log=Path("/e"),
        run_as_root=True,
    )
    lines = set(cnf.splitlines())
    for expected in (
        "bind-address=127.0.0.1",
        "skip-name-resolve",
        "performance_schema=OFF",
        "innodb_buffer_pool_dump_at_shutdown=ON",
        "innodb_buffer_pool_load_at_startup=ON",
        "innodb_flush_log_at_trx_commit=1",
        "user=root",
        "port=5",
    ):
        assert expected in lines


def test_sync_statements_are_exact_and_escape_grants() -> None:
    stmts = sync_statements(
        roles=[RoleSpec(name="app_owner", password_hash="*" + "A" * 40)],
        databases=[DatabaseSpec(name="my_db", owner="app_owner")],
        existing_users=[
            ("root", "localhost"),
            ("old_role", "%"),
            ("unknown_user", "%"),
            ("app_owner", "%"),
        ],
        existing_databases=["mysql", "sys", "gone_db", "unknown_db", "my_db"],
        dropped_users=["old_role", "root"],
        dropped_databases=["gone_db", "mysql"],
    )
    # Only what was deleted through the API is dropped (never a system name); names the
    # store does not know are left alone.
    assert stmts == [
        "DROP USER IF EXISTS 'old_role'@'%'",
        "CREATE USER IF NOT EXISTS 'app_owner'@'%' IDENTIFIED BY PASSWORD '*" + "A" * 40 + "'",
        "ALTER USER 'app_owner'@'%' IDENTIFIED BY PASSWORD '*" + "A" * 40 + "'",
        "DROP DATABASE IF EXISTS `gone_db`",
        "CREATE DATABASE IF NOT EXISTS `my_db`",
        "GRANT ALL PRIVILEGES ON `my\\_db`.* TO 'app_owner'@'%' WITH GRANT OPTION",
    ]


def test_role_accounts_exist_only_for_the_proxys_hosts() -> None:
    owner = RoleSpec(name="app_owner", password_hash="*" + "B" * 40)
    stmts = sync_statements(
        roles=[owner],
        databases=[DatabaseSpec(name="db", owner="app_owner")],
        # A datadir from before: the role's account at any host, and a stranger's.
        existing_users=[("app_owner", "%"), ("app_owner", "localhost"), ("someone", "%")],
        existing_databases=["db"],
        hosts=("localhost", "127.0.0.1", "::1"),
    )
    assert stmts[0] == "DROP USER IF EXISTS 'app_owner'@'%'"
    assert not any("someone" in s for s in stmts)  # unknown to the store: left alone
    creates = [s for s in stmts if s.startswith("CREATE USER")]
    assert [c.split(" IDENTIFIED")[0] for c in creates] == [
        "CREATE USER IF NOT EXISTS 'app_owner'@'localhost'",
        "CREATE USER IF NOT EXISTS 'app_owner'@'127.0.0.1'",
        "CREATE USER IF NOT EXISTS 'app_owner'@'::1'",
    ]
    assert sum(s.startswith("GRANT ALL") for s in stmts) == 3
