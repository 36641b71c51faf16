"""Local computes run as an unprivileged OS user when Selkie is root: the server's process
is that user's, its files are handed to it, and everything works as before (clients, the
control plane's admin access, suspend and resume). Where that user cannot reach the data
dir, computes run as root and Selkie says why."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from selkie.compute.identity import choose
from selkie.config import load_settings
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform
from tests.conftest import mysql_user
from tests.helpers import seed_template
from tests.platforms import require_mariadb, sql


@pytest.fixture
def open_data_dir(passable_dir: Path) -> Path:
    return passable_dir / "data"


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


async def test_computes_run_as_the_unprivileged_user(
    open_data_dir: Path, template_datadir: Path
) -> None:
    require_mariadb()
    mysql = mysql_user()
    seed_template(template_datadir, open_data_dir)
    platform = Platform.open(load_settings(environ={"SELKIE_DATA_DIR": str(open_data_dir)}))
    await platform.start()
    try:
        who = local_principal(platform.control)
        created = await asyncio.to_thread(platform.control.projects.create, who, name="nobody")
        ep, role = created.endpoints[0].id, created.roles[0]
        await platform.lifecycle.start(ep)
        info = await platform.driver.inspect(ep)
        assert info.pid is not None and uid_of(info.pid) == mysql.pw_uid
        datadir = next((open_data_dir / "branches").iterdir())
        assert datadir.stat().st_uid == mysql.pw_uid
        # The compute's user passes to its own files but lists none of Selkie's directories
        # (other branches' names, the computes' run directories).
        for listed in (open_data_dir, open_data_dir / "branches", open_data_dir / "computes"):
            as_mysql = await asyncio.to_thread(
                subprocess.run,
                ["runuser", "-u", mysql.pw_name, "--", "ls", str(listed)],
                capture_output=True,
            )
            assert as_mysql.returncode != 0 and b"Permission denied" in as_mysql.stderr
        # Clients and the control plane's own access work as before.
        rows = await asyncio.to_thread(
            sql, platform, ep, role.name, role.password or "", None, "SELECT 1"
        )
        assert rows == [(1,)]
        await platform.lifecycle.suspend(ep)
        await platform.lifecycle.start(ep)
        (rows,) = await platform.driver.execute(ep, ["SELECT CURRENT_USER()"])
        assert rows[0][0].startswith("root@")
    finally:
        await platform.stop()
        platform.close()


def test_a_data_dir_it_cannot_reach_keeps_computes_as_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mysql_user()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "data").mkdir()
    with caplog.at_level(logging.WARNING):
        assert choose(private / "data", "mysql") is None
    assert "cannot pass through" in caplog.text and str(private) in caplog.text
    assert choose(private / "data", "") is None
    assert choose(private / "data", "no-such-user-here") is None
