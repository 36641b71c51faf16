"""The safekeeper follows a compute as its replication account, over TCP as from another
host (the compute on another loopback address), and a clean stop gets the compute's log
to its end from the stream, not from the stopped compute's files."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from selkie.control.bootstrap import local_principal
from selkie.safekeeper.accounts import COMPUTE_ACCOUNT
from tests.control.history.conftest import compute_position, sql, started_project, wait_received
from tests.platforms import open_platform
from tests.safekeeper.replicas import binlog_reader, follow_replica, replica

pytestmark = pytest.mark.slow


async def test_followed_over_tcp_as_a_replication_account(
    tmp_path: Path, template_datadir: Path
) -> None:
    async with open_platform(
        tmp_path,
        template_datadir,
        compute_bind_address="127.0.0.2",
        safekeeper_follow="tcp",
    ) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await started_project(
            platform, who, "far", "CREATE TABLE t (i INT)", "INSERT INTO t VALUES (1), (2)"
        )
        ep = created.endpoints[0].id
        info = await platform.driver.inspect(ep)
        assert info.host == "127.0.0.2"
        (procs,) = await platform.driver.execute(
            ep,
            [
                "SELECT host, command FROM information_schema.processlist "
                f"WHERE user = '{COMPUTE_ACCOUNT}'"
            ],
        )
        # One connection, by TCP (a socket login shows 'localhost'), dumping the log.
        assert len(procs) == 1 and str(procs[0][0]).startswith("127.0.0.1:"), procs
        assert procs[0][1] == "Binlog Dump"
        (grants,) = await platform.driver.execute(
            ep, [f"SHOW GRANTS FOR '{COMPUTE_ACCOUNT}'@'127.0.0.1'"]
        )
        assert len(grants) == 1 and "GRANT REPLICATION SLAVE ON *.*" in grants[0][0], grants
        assert "PASSWORD" in grants[0][0]  # a password, hashed: no socket login
        # The account is made outside the history: no statement of it in the log.
        (events,) = await platform.driver.execute(ep, ["SHOW BINLOG EVENTS"])
        assert not [e for e in events if COMPUTE_ACCOUNT in str(e[5])]
        # Writes go on reaching the safekeeper.
        await asyncio.to_thread(sql, platform, ep, created, "INSERT INTO t VALUES (3)")
        await wait_received(platform, ep)
        status = [s for s in platform.history.safekeeper.status() if s.endpoint_id == ep]
        assert status and status[0].streaming


async def test_a_clean_stop_takes_the_log_from_the_stream(
    tmp_path: Path, template_datadir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_platform(
        tmp_path, template_datadir, compute_bind_address="127.0.0.2", safekeeper_follow="tcp"
    ) as platform:
        assert platform.history is not None
        who = local_principal(platform.control)
        created = await started_project(
            platform, who, "stop", "CREATE TABLE t (i INT AUTO_INCREMENT PRIMARY KEY, b BLOB)"
        )
        ep, db = created.endpoints[0].id, created.databases[0].name
        for round_ in range(1, 3):
            # A large transaction just before the stop: its events are still on their way
            # when the suspend begins (a shutdown would cut the stream before the end).
            await asyncio.to_thread(
                sql,
                platform,
                ep,
                created,
                f"INSERT INTO t (b) SELECT RANDOM_BYTES(1000) FROM {db}.seq_1_to_40000",
            )
            pos = await compute_position(platform, ep)
            with caplog.at_level(logging.WARNING, logger="selkie.safekeeper.service"):
                await platform.lifecycle.suspend(ep)
            assert "taken from the stopped compute's files" not in caplog.text
            assert max(s.last_seq for s in platform.history.safekeeper.status()) == pos
            await platform.lifecycle.start(ep)
            ((count,),) = await asyncio.to_thread(
                sql, platform, ep, created, "SELECT COUNT(*) FROM t"
            )
            assert count == 40000 * round_
            (ro,) = await platform.driver.execute(ep, ["SELECT @@read_only"])
            assert ro == [(0,)]  # the stop's read_only is not left on the next run


async def test_the_platform_serves_a_timeline_while_its_primary_is_suspended(
    tmp_path: Path, template_datadir: Path
) -> None:
    """``selkie up``'s own binlog server, on TCP, with the timeline's own account: a real
    replica and mariadb-binlog read the branch's history from the safekeeper while its
    compute is suspended, and another timeline's account is refused."""
    async with open_platform(
        tmp_path, template_datadir, safekeeper_listen="127.0.0.1:0"
    ) as platform:
        assert platform.history is not None
        binlogs = platform.history.binlogs
        assert binlogs.server is not None and binlogs.server.port is not None
        who = local_principal(platform.control)
        created = await started_project(
            platform,
            who,
            "served",
            "CREATE TABLE t (i INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1), (2), (3)",
        )
        other = await started_project(platform, who, "other", "CREATE TABLE secret (i INT)")
        ep, db = created.endpoints[0].id, created.databases[0].name
        await platform.lifecycle.suspend(ep)
        assert platform.lifecycle.get(ep).current_state.value == "suspended"
        row = platform.history.current_timeline(created.branch.id)
        assert row is not None
        creds = binlogs.credentials(row.id)
        async with replica(template_datadir, server_id=7) as rep:
            await follow_replica(rep, binlogs.server.port, creds.user, creds.password, "")
            await rep.wait_for(f"SELECT i FROM {db}.t ORDER BY i", [["1"], ["2"], ["3"]])
            # Nothing of the other project's timeline came with it.
            assert await rep.sql(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'secret'"
            ) == [["0"]]
            assert platform.lifecycle.get(ep).current_state.value == "suspended"
        async with binlog_reader(
            binlogs.server.port, creds.user, creds.password, "--stop-never", "selkie-bin.000001"
        ) as reader:
            await reader.read_until("INSERT INTO", "@1=3")
        # A timeline's account reads that timeline only: another's password is refused.
        other_row = platform.history.current_timeline(other.branch.id)
        assert other_row is not None
        async with binlog_reader(
            binlogs.server.port, other_row.id, creds.password, "selkie-bin.000001"
        ) as reader:
            with pytest.raises(AssertionError, match="Access denied"):
                await reader.read_until("@1=3", timeout=10)
