"""The safekeeper as a binlog server, against real MariaDB clients: ``mariadb-binlog
--read-from-remote-server``, real ``mariadbd`` replicas, PyMySQL and the safekeeper's own
replica client. The history served is a real MariaDB 10.11 binlog (the archive tests'
fixture: transactions 1-3 in the archive only, 4-6 in the safekeeper's log only), and in
the slow tests a real compute's timeline, suspended and resumed under a running replica."""

from __future__ import annotations

import asyncio
import hashlib
import re
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

from selkie.archive import LocalArchive, segments
from selkie.archive.binlog import (
    HEADER_LEN,
    EventType,
    Gtid,
    file_transactions,
    parse_gtid_list,
    parse_header,
    parse_rotate,
    split_events,
    verify_checksum,
    with_checksum,
)
from selkie.archive.layout import TimelineRef
from selkie.archive.segments import Record
from selkie.model import OperationAction, Principal
from selkie.mysql import auth
from selkie.mysql.packets import (
    build_eof,
    build_handshake_response,
    build_text_result,
    is_err,
    parse_err,
    parse_handshake_v10,
)
from selkie.mysql.wire import ErrorCode
from selkie.platform import Platform
from selkie.safekeeper import statements
from selkie.safekeeper.client import CLIENT_CAPS, Received, ReplicaConnection, ReplicationError
from selkie.safekeeper.dump import HistorySource
from selkie.safekeeper.log import TimelineLog
from selkie.safekeeper.server import Account, BinlogServer
from selkie.safekeeper.service import Safekeeper
from selkie.safekeeper.stream import (
    MAX_FILE_BYTES,
    BadPosition,
    VirtualFile,
    file_name,
    parse_file_name,
)
from tests.control.history.conftest import finished, sql, start, started_project
from tests.safekeeper.replicas import binlog_reader, follow_replica, replica

FIXTURE = Path(__file__).parents[1] / "archive" / "fixtures" / "binlog.000001"
PASSWORD = "repl-s3cret"
REF = TimelineRef("p1", "tl-served")
# A timeline whose history held begins after 0-1-3 (what came before was pruned).
PRUNED = TimelineRef("p1", "tl-pruned")
WAIT = 20.0


def native_hash(password: str) -> bytes:
    return hashlib.sha1(hashlib.sha1(password.encode()).digest()).digest()


def renumbered(record: Record, seq: int) -> Record:
    """The same transaction under another GTID (what a compute writes next, for clients
    that only print or count events)."""
    events = split_events(record.events)
    gtid = bytearray(events[0])
    struct.pack_into("<Q", gtid, HEADER_LEN, seq)
    events[0] = with_checksum(bytes(gtid[:-4]))
    return Record(seq, record.received_us, record.timestamp, record.server_id, b"".join(events))


@dataclass
class Served:
    server: BinlogServer
    log: TimelineLog
    records: list[Record]

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    async def append(self, *records: Record) -> None:
        """Transactions reach the safekeeper and are made durable (as from a compute)."""
        for record in records:
            self.log.append(record)
        await self.log.flush()


@asynccontextmanager
async def serving(
    root: Path, *, max_file_bytes: int = MAX_FILE_BYTES, listen: str = "127.0.0.1:0"
) -> AsyncIterator[Served]:
    archive = LocalArchive(root / "archive")
    safekeeper = Safekeeper(root=root / "safekeeper", archive=archive)
    fde, txns = file_transactions(FIXTURE.read_bytes())
    records = [Record.of(t) for t in txns]
    for ref, part in ((REF, records[:3]), (PRUNED, records[3:])):
        name = segments.object_name(part[0].seq, part[-1].seq)
        await archive.put(ref.wal_prefix + name, segments.compress(segments.encode(fde, part)))
    log = await safekeeper.timeline(REF)
    log.fde = fde
    log.start_at(3, archived=True)
    accounts = {
        "repl": Account(REF, native_hash(PASSWORD)),
        "old": Account(PRUNED, native_hash(PASSWORD)),
    }

    async def lookup(user: str) -> Account | None:
        return accounts.get(user)

    server = BinlogServer(
        source=HistorySource(archive=archive, safekeeper=safekeeper),
        accounts=lookup,
        max_file_bytes=max_file_bytes,
    )
    await server.start(listen)
    served = Served(server, log, records)
    await served.append(*records[3:])
    try:
        yield served
    finally:
        await server.stop()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as s:
        yield s


async def replica_connection(port: int | str, user: str, password: str) -> ReplicaConnection:
    """The safekeeper's own replica client, logged in with a password (on a port of
    127.0.0.1 or a ``unix:`` socket)."""
    if isinstance(port, str):
        reader, writer = await asyncio.open_unix_connection(port.removeprefix("unix:"))
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = ReplicaConnection(reader, writer)
    _, payload = await conn.stream.read()
    greeting = parse_handshake_v10(payload)
    token = auth.native_token(hashlib.sha1(password.encode()).digest(), greeting.scramble)
    response = build_handshake_response(
        capabilities=CLIENT_CAPS & greeting.capabilities,
        max_packet_size=1 << 30,
        charset=greeting.charset,
        user=user,
        auth_response=token,
        database=None,
    )
    await conn.stream.send(1, response)
    _, reply = await conn.stream.read()
    if is_err(reply):
        conn.close()
        err = parse_err(reply)
        raise ReplicationError(err.message, code=err.code)
    return conn


async def next_events(stream: AsyncIterator[Received], n: int) -> list[Received]:
    return [await asyncio.wait_for(anext(stream), WAIT) for _ in range(n)]


async def until_type(stream: AsyncIterator[Received], etype: int) -> tuple[Received, list[int]]:
    """Events up to the first of ``etype``; that one, and the types before it."""
    seen = []
    while True:
        (event,) = await next_events(stream, 1)
        if event.type == etype:
            return event, seen
        seen.append(event.type)


def log_pos(event: bytes) -> int:
    return parse_header(event).log_pos


def gtids(output: str) -> list[str]:
    return re.findall(r"\tGTID (\d+-\d+-\d+)", output)


def connect(served: Served, password: str = PASSWORD, user: str = "repl") -> pymysql.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host="127.0.0.1", port=served.port, user=user, password=password, connect_timeout=5
    )


# --- mariadb-binlog ------------------------------------------------------------------------


async def test_mariadb_binlog_reads_the_archive_then_the_local_log(served: Served) -> None:
    # Without --stop-never it reads to the end and stops (a non-blocking dump).
    async with binlog_reader(served.port, "repl", PASSWORD, "selkie-bin.000001") as reader:
        out = await reader.read_until("End of log file")
        assert await reader.proc.wait() == 0
    assert gtids(out) == [f"0-1-{i}" for i in range(1, 7)]
    assert "CREATE DATABASE shop" in out and "### UPDATE `shop`.`t`" in out and "@1=7" in out
    # Positions are those of one consistent file: every event starts where one ended.
    ends = [int(x) for x in re.findall(r"end_log_pos (\d+)", out)]
    starts = [int(x) for x in re.findall(r"^# at (\d+)$", out, re.M)]
    assert ends == sorted(ends) and starts[0] == 4
    assert set(starts[1:]) <= set(ends) and max(starts) < ends[-1]
    assert "Gtid list []" in out

    # From a byte position in the file: where transaction 4 begins.
    at_4 = int(re.search(r"# at (\d+)\n#[^\n]*\tGTID 0-1-4", out).group(1))  # type: ignore[union-attr]
    async with binlog_reader(
        served.port, "repl", PASSWORD, f"--start-position={at_4}", "selkie-bin.000001"
    ) as reader:
        later = await reader.read_until("End of log file")
    assert gtids(later) == ["0-1-4", "0-1-5", "0-1-6"]
    async with binlog_reader(
        served.port, "repl", PASSWORD, f"--start-position={at_4 + 1}", "selkie-bin.000001"
    ) as reader:
        assert await reader.proc.wait() != 0
        assert reader.proc.stderr is not None
        error = (await reader.proc.stderr.read()).decode()
    assert "not where an event begins" in error

    # From a GTID: the file that begins right after it (or any, with --to-last-log).
    async with binlog_reader(
        served.port, "repl", PASSWORD, "--start-position=0-1-3", "selkie-bin.000004"
    ) as reader:
        out = await reader.read_until("End of log file")
    assert gtids(out) == ["0-1-4", "0-1-5", "0-1-6"] and "Gtid list [0-1-3]" in out


async def test_mariadb_binlog_follows_new_transactions(served: Served) -> None:
    async with binlog_reader(
        served.port, "repl", PASSWORD, "--stop-never", "--to-last-log", "selkie-bin.000001"
    ) as reader:
        await reader.read_until("\tGTID 0-1-6")
        await served.append(renumbered(served.records[5], 7))
        out = await reader.read_until("\tGTID 0-1-7", "COMMIT")
        assert reader.proc.returncode is None  # still waiting for more
    assert gtids(out) == [f"0-1-{i}" for i in range(1, 8)]


async def test_files_rotate_at_their_size_limit(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, max_file_bytes=600) as s,
        binlog_reader(s.port, "repl", PASSWORD, "--to-last-log", "selkie-bin.000001") as reader,
    ):
        out = await reader.read_until("End of log file")
        assert await reader.proc.wait() == 0
    assert gtids(out) == [f"0-1-{i}" for i in range(1, 7)]
    rotations = re.findall(r"Rotate to (selkie-bin\.\d+)", out)
    # Each file ends after the transaction that takes it past 600 bytes.
    assert rotations[0] == "selkie-bin.000001" and "selkie-bin.000004" in rotations


# --- the replication conversation ----------------------------------------------------------


async def test_a_dump_sends_the_stream_a_primary_sends(served: Served) -> None:
    conn = await replica_connection(served.port, "repl", PASSWORD)
    try:
        await conn.query("SET @master_heartbeat_period = 100000000")  # 0.1 s, in ns
        await conn.start_dump(after=Gtid(0, 1, 4), server_id=9, semi_sync=False)
        stream = conn.events()
        rotate, fde, gtid_list = await next_events(stream, 3)
        assert rotate.type == EventType.ROTATE and parse_header(rotate.event).flags & 0x20
        assert parse_rotate(rotate.event, checksum=True) == (4, "selkie-bin.000005")
        assert fde.type == EventType.FORMAT_DESCRIPTION and log_pos(fde.event) == 4 + len(fde.event)
        assert gtid_list.type == EventType.GTID_LIST
        assert parse_gtid_list(gtid_list.event, checksum=True) == [Gtid(0, 1, 4)]
        # Transactions 5 and 6, positions consecutive, checksums right.
        heartbeat, types = await until_type(stream, EventType.HEARTBEAT)
        assert types.count(EventType.GTID) == 2 and EventType.ANNOTATE_ROWS not in types
        assert heartbeat.event[HEADER_LEN:-4] == b"selkie-bin.000005"
        end = log_pos(heartbeat.event)
        # Idle: heartbeats at the period asked for, each where the file ends.
        (again,) = await next_events(stream, 1)
        assert again.type == EventType.HEARTBEAT and log_pos(again.event) == end
        await served.append(renumbered(served.records[2], 7))
        gtid, _ = await until_type(stream, EventType.GTID)
        verify_checksum(gtid.event)
        assert log_pos(gtid.event) == end + len(gtid.event)
        assert struct.unpack_from("<Q", gtid.event, HEADER_LEN)[0] == 7
    finally:
        conn.close()


async def test_positions_the_history_does_not_hold_are_fatal(served: Served) -> None:
    async def dump_error(user: str, after: int) -> ReplicationError:
        conn = await replica_connection(served.port, user, PASSWORD)
        try:
            await conn.start_dump(after=Gtid(0, 1, after), server_id=9, semi_sync=False)
            with pytest.raises(ReplicationError) as info:
                await next_events(conn.events(), 1)
            return info.value
        finally:
            conn.close()

    future = await dump_error("repl", 50)
    assert future.code == ErrorCode.MASTER_FATAL_ERROR_READING_BINLOG
    assert "0-1-50, which is not in the master's binlog" in str(future)
    assert "ends at 0-1-6" in str(future)
    too_old = await dump_error("old", 2)
    assert too_old.code == ErrorCode.MASTER_FATAL_ERROR_READING_BINLOG
    assert "too old" in str(too_old) and "begins after 0-1-3" in str(too_old)
    # From where the pruned history begins, it is served.
    conn = await replica_connection(served.port, "old", PASSWORD)
    try:
        await conn.start_dump(after=Gtid(0, 1, 3), server_id=9, semi_sync=False)
        gtid, _ = await until_type(conn.events(), EventType.GTID)
        assert struct.unpack_from("<Q", gtid.event, HEADER_LEN)[0] == 4
    finally:
        conn.close()

    # A replica that did not say it handles checksums gets MariaDB's refusal.
    conn = await replica_connection(served.port, "repl", PASSWORD)
    try:
        await conn.query("SET @mariadb_slave_capability = 4")
        await conn.stream.send(0, bytes([0x12]) + struct.pack("<IHI", 4, 0, 9))
        _, reply = await asyncio.wait_for(conn.stream.read(), WAIT)
        err = parse_err(reply)
        assert err.code == 1236 and "checksum" in err.message
    finally:
        conn.close()


async def test_logins_and_statements(served: Served) -> None:
    for user, password in (("repl", "wrong"), ("nobody", PASSWORD)):
        with pytest.raises(pymysql.err.OperationalError) as info:
            await asyncio.to_thread(connect, served, password, user)
        assert info.value.args == (
            1045,
            f"Access denied for user '{user}'@'127.0.0.1' (using password: YES)",
        )

    def session() -> None:
        conn = connect(served)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@server_id, @@gtid_binlog_pos, @@version_comment")
                assert cur.fetchall() == ((1, "0-1-6", "Selkie binlog server"),)
                with pytest.raises(pymysql.err.MySQLError) as info:
                    cur.execute("CREATE TABLE t (i INT)")
                assert info.value.args[0] == ErrorCode.NOT_SUPPORTED_YET
                with pytest.raises(pymysql.err.MySQLError) as info:
                    cur.execute("SELECT @@no_such_thing")
                assert info.value.args[0] == ErrorCode.UNKNOWN_SYSTEM_VARIABLE
                cur.execute("SHOW VARIABLES LIKE 'SERVER\\_ID'")
                assert cur.fetchall() == (("server_id", "1"),)
                cur.execute("SET @slave_connect_state = '0-1-6', NAMES utf8mb4")
                cur.execute("SELECT @slave_connect_state, 1 AS one")
                assert cur.fetchall() == (("0-1-6", 1),)
        finally:
            conn.close()

    await asyncio.to_thread(session)


async def test_a_garbage_packet_closes_only_its_connection(served: Served) -> None:
    conn = await replica_connection(served.port, "repl", PASSWORD)
    try:
        await conn.start_dump(after=Gtid(0, 1, 6), server_id=9, semi_sync=False)
        stream = conn.events()
        await next_events(stream, 3)  # rotate, format description, GTID list

        # Garbage instead of a login: "Bad handshake", then the connection is closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        await reader.read(1 << 16)
        writer.write(b"\x07\x00\x00\x01garbage")
        reply = await asyncio.wait_for(reader.read(1 << 16), WAIT)
        assert parse_err(reply[4:]).code == ErrorCode.HANDSHAKE_ERROR
        assert await asyncio.wait_for(reader.read(1), WAIT) == b""
        writer.close()
        # A malformed command after a login: closed too.
        other = await replica_connection(served.port, "repl", PASSWORD)
        await other.stream.send(0, b"\x15\x01")  # COM_REGISTER_SLAVE cut short
        assert await asyncio.wait_for(other.stream.reader.read(1), WAIT) == b""
        other.close()

        # The dump goes on, and the server still takes logins.
        await served.append(renumbered(served.records[5], 7))
        gtid, _ = await until_type(stream, EventType.GTID)
        assert struct.unpack_from("<Q", gtid.event, HEADER_LEN)[0] == 7
        await asyncio.to_thread(lambda: connect(served).close())
    finally:
        conn.close()


async def test_unix_socket_and_stop(tmp_path: Path) -> None:
    sock = tmp_path / "binlog.sock"
    async with serving(tmp_path, listen=f"unix:{sock}") as s:
        assert s.server.address == f"unix:{sock}" and s.server.port is None

        def version() -> tuple:  # type: ignore[type-arg]
            conn = pymysql.connect(unix_socket=str(sock), user="repl", password=PASSWORD)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT VERSION(), @@hostname")
                    return cur.fetchone()  # type: ignore[no-any-return]
            finally:
                conn.close()

        assert (await asyncio.to_thread(version))[0].startswith("10.11")
        with pytest.raises(ReplicationError, match="Access denied"):
            await replica_connection(f"unix:{sock}", "repl", "")

        # A replica that dumps again under the same server id replaces its old dump.
        old = await replica_connection(f"unix:{sock}", "repl", PASSWORD)
        await old.start_dump(after=Gtid(0, 1, 6), server_id=9, semi_sync=False)
        old_stream = old.events()
        await next_events(old_stream, 3)
        conn = await replica_connection(f"unix:{sock}", "repl", PASSWORD)
        await conn.start_dump(after=Gtid(0, 1, 6), server_id=9, semi_sync=False)
        stream = conn.events()
        await next_events(stream, 3)
        with pytest.raises(ConnectionResetError):
            await next_events(old_stream, 1)
        old.close()
        assert s.server.dumps == 1

        # stop() ends every dump and removes the socket.
        await s.server.stop()
        with pytest.raises(ConnectionResetError):
            await next_events(stream, 1)
        conn.close()
        assert s.server.dumps == 0 and not sock.exists()


# --- pure parts ----------------------------------------------------------------------------


def test_virtual_files() -> None:
    fde, txns = file_transactions(FIXTURE.read_bytes())
    assert file_name(7) == "selkie-bin.000007" and parse_file_name("selkie-bin.000007") == 7
    assert parse_file_name("selkie-bin.000000") is None and parse_file_name("binlog.000001") is None
    vf = VirtualFile(first=7, fde=fde, server_id=1)
    rotate, first_fde, gtid_list = vf.opening(timestamp=1_800_000_000)
    for event in (rotate, first_fde, gtid_list):
        verify_checksum(event)
    assert parse_gtid_list(gtid_list, checksum=True) == [Gtid(0, 1, 6)]
    assert log_pos(gtid_list) == vf.pos == 4 + len(first_fde) + len(gtid_list)
    events = split_events(txns[0].events)
    placed = [vf.place(e) for e in events]
    assert [log_pos(p) for p in placed if p] == [
        4 + len(first_fde) + len(gtid_list) + sum(len(e) for e in events[: i + 1])
        for i in range(len(events))
    ]
    assert log_pos(vf.heartbeat()) == vf.pos
    # A replica asking for a position inside an event is told so.
    inside = VirtualFile(first=1, fde=fde, server_id=1, start=4 + len(fde) + 3)
    with pytest.raises(BadPosition):
        inside.opening(timestamp=0)


def test_text_result_set_packets() -> None:
    count, numeric, text, eof, row, end = build_text_result(
        [("n", True), ("s", False)], [[b"42", None]]
    )
    assert count == b"\x02" and eof == end == build_eof() == b"\xfe\x00\x00\x02\x00"
    # catalog "def", empty schema/table/org_table, the name, empty org_name, then fixed fields:
    # charset, length, type (BIGINT 0x08 / VAR_STRING 0xfd), flags, decimals, filler.
    assert (
        numeric
        == b"\x03def\x00\x00\x00\x01n\x00\x0c\x3f\x00\x15\x00\x00\x00\x08\x81\x00\x00\x00\x00"
    )
    assert text[-10:] == b"\xfc\x03\x00\x00\xfd\x00\x00\x00\x00\x00"
    assert row == b"\x0242\xfb"


def test_statements_a_replica_sends() -> None:
    session = statements.Session(
        user="repl",
        host="10.0.0.1",
        connection_id=3,
        system={
            "server_id": 1,
            "gtid_domain_id": 0,
            "binlog_checksum": "CRC32",
            "version": "10.11.0-MariaDB-selkie",
        },
        clock=lambda: 1_800_000_000.5,
    )

    def run(text: str) -> statements.Reply:
        return statements.run(text, session)

    assert run("SELECT UNIX_TIMESTAMP()") == statements.Rows(
        ["UNIX_TIMESTAMP()"], [[1_800_000_000]]
    )
    assert run("SHOW VARIABLES LIKE 'SERVER_ID'") == statements.Rows(
        ["Variable_name", "Value"], [["server_id", "1"]]
    )
    for statement in (
        "SET @master_heartbeat_period= 30000000000",
        "SET @master_binlog_checksum= @@global.binlog_checksum",
        "SET @mariadb_slave_capability=4",
        "SET @slave_connect_state='0-1-42'",
        "SET @slave_gtid_strict_mode=0",
        "SET @slave_gtid_ignore_duplicates=0",
        "SET NAMES latin1",
        "/*!40101 SET character_set_client = utf8 */",
    ):
        assert run(statement) == statements.Done(), statement
    assert session.user_vars == {
        "master_heartbeat_period": 30_000_000_000,
        "master_binlog_checksum": "CRC32",
        "mariadb_slave_capability": 4,
        "slave_connect_state": "0-1-42",
        "slave_gtid_strict_mode": 0,
        "slave_gtid_ignore_duplicates": 0,
    }
    assert run("SELECT @master_binlog_checksum") == statements.Rows(
        ["@master_binlog_checksum"], [["CRC32"]]
    )
    assert run("SELECT @@GLOBAL.gtid_domain_id") == statements.Rows(
        ["@@GLOBAL.gtid_domain_id"], [[0]]
    )
    assert run("select version() as v, USER(), @nothing limit 1;") == statements.Rows(
        ["v", "USER()", "@nothing"], [["10.11.0-MariaDB-selkie", "repl@10.0.0.1", None]]
    )
    assert run("SHOW GLOBAL VARIABLES WHERE Variable_name = 'gtid_domain_id'") == statements.Rows(
        ["Variable_name", "Value"], [["gtid_domain_id", "0"]]
    )
    refused = run("SET GLOBAL read_only = 0")
    assert isinstance(refused, statements.Refused) and refused.code == ErrorCode.NOT_SUPPORTED_YET
    refused = run("SELECT 'unterminated")
    assert isinstance(refused, statements.Refused) and refused.code == ErrorCode.PARSE_ERROR
    refused = run("SELECT @@innodb_buffer_pool_size")
    assert isinstance(refused, statements.Refused)
    assert refused.code == ErrorCode.UNKNOWN_SYSTEM_VARIABLE
    refused = run("DROP DATABASE shop")
    assert isinstance(refused, statements.Refused) and "DROP DATABASE shop" in refused.message


# --- real replicas (slow) ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_replica_replicates_across_virtual_files(
    tmp_path: Path, template_datadir: Path
) -> None:
    # A replica that would rather be semi-synchronous is served asynchronously (the
    # server has no rpl_semi_sync_master_enabled, as a primary without semi-sync).
    semi_sync = ("--rpl-semi-sync-slave-enabled=ON",)
    async with (
        serving(tmp_path, max_file_bytes=600) as s,
        replica(template_datadir, server_id=7, options=semi_sync) as rep,
    ):
        await follow_replica(rep, s.port, "repl", PASSWORD, "", until="0-1-4")
        # START SLAVE UNTIL: the server stops the dump after transaction 4.
        await rep.wait_for("SELECT @@gtid_slave_pos", [["0-1-4"]])
        await rep.wait_for("SELECT i, v FROM shop.t", [["1", "c"]])
        for _ in range(100):
            if (await rep.slave_status())["Slave_IO_Running"] == "No":
                break
            await asyncio.sleep(0.1)
        assert (await rep.slave_status())["Slave_IO_Running"] == "No"
        assert (await rep.sql("SHOW TABLES IN shop")) == [["t"]]
        await rep.sql("START SLAVE")
        await rep.wait_for("SELECT i FROM shop.m", [["7"]])
        await rep.wait_for("SELECT @@gtid_slave_pos", [["0-1-6"]])
        status = await rep.slave_status()
        assert status["Slave_IO_Running"] == "Yes" and status["Last_IO_Error"] == ""
        # It rotated through the small virtual files, and heartbeats keep it company.
        assert status["Master_Log_File"] != "selkie-bin.000001"
        await asyncio.sleep(1.2)
        ((_, beats),) = await rep.sql("SHOW STATUS LIKE 'Slave_received_heartbeats'")
        assert int(beats) >= 1
        ((_, semi),) = await rep.sql("SHOW STATUS LIKE 'Rpl_semi_sync_slave_status'")
        assert semi == "OFF"
        assert "does not support semi-sync" in rep.error_log()


@pytest.mark.slow
async def test_a_replica_follows_a_compute_through_suspend_and_resume(
    durable: Platform, who_d: Principal, template_datadir: Path
) -> None:
    platform, who = durable, who_d
    assert platform.history is not None
    created = await started_project(
        platform,
        who,
        "replicated",
        "CREATE TABLE t (i INT PRIMARY KEY, note VARCHAR(50))",
        "INSERT INTO t VALUES (1, 'one'), (2, 'two')",
        "UPDATE t SET note = 'zwei' WHERE i = 2",
    )
    pid, ep, db = created.project.id, created.endpoints[0].id, created.databases[0].name
    safekeeper = platform.history.safekeeper
    (status,) = [s for s in safekeeper.status() if s.endpoint_id == ep]
    ref = TimelineRef(status.project_id, status.timeline_id)

    # The primary stops: its history goes to the archive and leaves the safekeeper's disk.
    _, ops = await asyncio.to_thread(
        platform.control.endpoints.request, who, pid, ep, OperationAction.SUSPEND_COMPUTE
    )
    await finished(platform, who, pid, [o.id for o in ops])
    tl = safekeeper.logs[ref.timeline_id]
    assert await safekeeper.wait_archived(ref, tl.last_seq, 30)
    for _ in range(300):
        if not tl.segments:
            break
        await asyncio.sleep(0.1)
    assert not tl.segments

    server = BinlogServer(
        source=HistorySource(archive=platform.history.archive, safekeeper=safekeeper),
        accounts={"repl": Account(ref, native_hash(PASSWORD))}.get,
    )
    await server.start("127.0.0.1:0")
    assert server.port is not None
    query = f"SELECT i, note FROM {db}.t ORDER BY i"
    try:
        # (a) A replica made from the template (where the branch's data began) ends up
        # with exactly the tenant's rows, read from the archive.
        async with replica(template_datadir, server_id=3) as rep:
            await follow_replica(rep, server.port, "repl", PASSWORD, "")
            await rep.wait_for(query, [["1", "one"], ["2", "zwei"]])
            # (b) mariadb-binlog decodes the same history.
            async with binlog_reader(
                server.port, "repl", PASSWORD, "--stop-never", "selkie-bin.000001"
            ) as reader:
                await reader.read_until("@2='zwei'")
                # (c) The primary starts again; what it writes flows to both, live.
                await start(platform, who, pid, ep)
                await asyncio.to_thread(
                    sql,
                    platform,
                    ep,
                    created,
                    "INSERT INTO t VALUES (3, 'three')",
                    "DELETE FROM t WHERE i = 1",
                )
                await reader.read_until("@2='three'", "### DELETE FROM")
            await rep.wait_for(query, [["2", "zwei"], ["3", "three"]])
            primary = await asyncio.to_thread(
                sql, platform, ep, created, "SELECT i, note FROM t ORDER BY i"
            )
            assert [[str(i), note] for i, note in primary] == [["2", "zwei"], ["3", "three"]]

            # (d) A position beyond the timeline's end stops the replica with 1236; a
            # wrong password is refused with 1045.
            await rep.sql("STOP SLAVE", "SET GLOBAL gtid_slave_pos = '0-1-100000'", "START SLAVE")
            code, message = await rep.wait_io_error()
            assert code == 1236 and "0-1-100000, which is not in the master's binlog" in message
            await rep.sql(
                "STOP SLAVE",
                "RESET SLAVE",
                "SET GLOBAL gtid_slave_pos = ''",
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={server.port}, "
                "MASTER_USER='repl', MASTER_PASSWORD='wrong', MASTER_USE_GTID=slave_pos, "
                "MASTER_CONNECT_RETRY=1",
                "START SLAVE",
            )
            code, message = await rep.wait_io_error()
            assert code == 1045 and "Access denied" in message
    finally:
        await server.stop()
