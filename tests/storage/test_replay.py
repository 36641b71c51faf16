"""Restores apply the log with the server's own replication applier, in an unprivileged
private server that holds no secrets: a tenant's statement is never re-read by a text
client (which once let ``--\\x01`` turn a comment into a statement run as root)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from selkie.archive.local import LocalArchive
from selkie.compute.identity import choose
from selkie.control.bootstrap import local_principal
from selkie.errors import StorageError
from selkie.safekeeper.service import Safekeeper
from selkie.storage.replay import Tools, replay_server
from tests.conftest import mysql_user
from tests.control.history.conftest import branch_at, sql, started_project, wait_received
from tests.platforms import open_platform, require_mariadb

pytestmark = pytest.mark.slow

SECRET = "AKIA-restore-must-not-see-this"


def status_of(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


async def test_restore_server_is_unprivileged_and_holds_no_secrets(
    passable_dir: Path, template_datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mariadb()
    mysql = mysql_user()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("SELKIE_STORE_URL", "postgresql://selkie:pw@db/selkie")
    datadir = passable_dir / "data" / "staging"
    shutil.copytree(template_datadir, datadir, symlinks=True)
    identity = choose(passable_dir / "data", "mysql")
    assert identity is not None
    async with replay_server(datadir, Tools(identity=identity)) as server:
        assert int(status_of(server.pid)["Uid"].split()[0]) == mysql.pw_uid
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        names = {e.split(b"=", 1)[0].decode() for e in environ if e}
        assert names <= {"PATH", "LANG", "TZ"}, names
        assert SECRET.encode() not in b"\0".join(environ)
        rows = await server.sql("SELECT @@skip_networking, @@secure_file_priv, @@server_id")
        skip_networking, file_priv, server_id = rows[0]
        # No listener; a server id of its own (a replica skips its own id's events).
        assert skip_networking == 1 and server_id != 1
        assert file_priv and Path(file_priv).is_dir() and not any(Path(file_priv).iterdir())
        assert not str(file_priv).startswith(str(passable_dir))
        # What is outside that directory is out of reach for the server's own file access.
        with pytest.raises(Exception, match="secure-file-priv"):
            await server.sql("SELECT LOAD_FILE('/etc/hostname') INTO OUTFILE '/tmp/x'")


async def test_compute_environment_holds_no_secrets(
    tmp_path: Path, template_datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    async with open_platform(tmp_path, template_datadir, archive_url="off") as platform:
        who = local_principal(platform.control)
        created = await asyncio.to_thread(platform.control.projects.create, who, name="env")
        ep = created.endpoints[0].id
        await platform.lifecycle.start(ep)
        info = await platform.driver.inspect(ep)
        assert info.pid is not None
        environ = Path(f"/proc/{info.pid}/environ").read_bytes()
        assert SECRET.encode() not in environ and b"AWS_" not in environ


# Statements a tenant with ordinary privileges commits, each one statement to the server
# (``--`` and a control character or tab starts a comment there), which a text client
# replaying ``mariadb-binlog`` output would split after the ``/*!*/;`` delimiter and run
# the rest as root.
def payloads(marker: str, outfile: Path) -> list[str]:
    evil = [
        f"CREATE DATABASE pwned_{marker}",
        f"SELECT 'pwned' INTO OUTFILE '{outfile}'",
        "LOAD DATA INFILE '/etc/hostname' INTO TABLE loot",
        "INSERT INTO loot VALUES ('from root')",
    ]
    return [
        f"CREATE TABLE IF NOT EXISTS t1 (a INT) --\x01 /*!*/; {evil[0]} /*!*/;",
        f"CREATE TABLE IF NOT EXISTS t2 (a INT) --\t /*!*/; {evil[1]} /*!*/;",
        f"CREATE TABLE IF NOT EXISTS t3 (a INT) --\x01 /*!*/; {evil[2]} /*!*/;",
        # In a routine's body: the comment ends at the line's end, the body goes on.
        f"CREATE PROCEDURE p1() BEGIN SELECT 1; --\x01 /*!*/; {evil[3]} /*!*/;\nEND",
        # An executable comment around it.
        f"CREATE TABLE IF NOT EXISTS t4 (a INT) /*!100000 COMMENT 'x' */ --\x01 /*!*/; "
        f"{evil[0]}x /*!*/;",
    ]


async def test_tenant_comments_are_not_statements_after_a_restore(
    passable_dir: Path, template_datadir: Path
) -> None:
    require_mariadb()
    mysql_user()
    marker = secrets.token_hex(4)
    outfile = Path(tempfile.gettempdir()) / f"selkie-pwned-{marker}"
    async with open_platform(
        passable_dir, template_datadir, archive_url=f"file://{passable_dir / 'archive'}"
    ) as platform:
        who = local_principal(platform.control)
        created = await started_project(
            platform,
            who,
            "inject",
            "CREATE TABLE loot (v VARCHAR(200))",
            "CREATE TABLE t (i INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1), (2), (3)",
        )
        ep = created.endpoints[0].id
        for statement in payloads(marker, outfile):
            await asyncio.to_thread(sql, platform, ep, created, statement)
        await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (4)")
        seq = await wait_received(platform, ep)
        # Nothing ran beyond the statements themselves on the compute.
        assert not outfile.exists()

        child = await branch_at(platform, who, created, "restored", parent_lsn=f"0-1-{seq}")
        child_ep = child.endpoints[0].id
        db = created.databases[0].name
        (tables,) = await platform.driver.execute(
            child_ep,
            [f"SELECT table_name FROM information_schema.tables WHERE table_schema='{db}'"],
        )
        assert sorted(r[0] for r in tables) == ["loot", "t", "t1", "t2", "t3", "t4"]
        (databases,) = await platform.driver.execute(child_ep, ["SHOW DATABASES"])
        assert not [r[0] for r in databases if str(r[0]).startswith("pwned")]
        (loot,) = await platform.driver.execute(child_ep, [f"SELECT v FROM {db}.loot"])
        assert loot == []
        (got,) = await platform.driver.execute(child_ep, [f"SELECT i FROM {db}.t ORDER BY i"])
        assert [r[0] for r in got] == [1, 2, 3, 4]
        (procs,) = await platform.driver.execute(
            child_ep,
            [f"SELECT routine_name FROM information_schema.routines WHERE routine_schema='{db}'"],
        )
        assert [r[0] for r in procs] == ["p1"]
        assert not outfile.exists()


async def test_restore_errors_name_no_host_paths(
    passable_dir: Path, template_datadir: Path
) -> None:
    """A restore server that fails says why without this host's paths (tenants see it)."""
    require_mariadb()
    datadir = passable_dir / "staging"
    shutil.copytree(template_datadir, datadir, symlinks=True)
    # Aria cannot open its control file: the server names it, with its path, and stops.
    (datadir / "aria_log_control").unlink()
    (datadir / "aria_log_control").mkdir()
    with pytest.raises(StorageError) as caught:
        async with replay_server(datadir, Tools()):
            pass
    assert "aria control file '…/aria_log_control'" in caught.value.message, caught.value.message
    assert str(passable_dir) not in caught.value.message
    assert "selkie-restore-" not in caught.value.message


async def test_archive_and_safekeeper_trees_are_private(tmp_path: Path) -> None:
    """Every tenant's history is in them: Selkie's alone (0700 trees, 0600 objects)."""
    archive = LocalArchive(tmp_path / "archive")
    await archive.put("projects/p/timelines/t/wal/x.seg.zst", b"data")
    assert (tmp_path / "archive").stat().st_mode & 0o777 == 0o700
    obj = tmp_path / "archive" / "projects/p/timelines/t/wal/x.seg.zst"
    assert obj.stat().st_mode & 0o777 == 0o600
    sk = Safekeeper(root=tmp_path / "sk", archive=archive)
    await sk.start()
    try:
        assert (tmp_path / "sk").stat().st_mode & 0o777 == 0o700
    finally:
        await sk.stop()
