"""Replay: a private replica whose SQL thread applies a timeline's log to a datadir.

The log is applied by the server's own replication applier, never by a text client: the
transactions are written as relay log files (the events exactly as the compute wrote them,
checksums included) and a ``mariadbd`` on the datadir runs only its SQL thread over them,
with parallel apply. Nothing of a tenant's statements is ever re-read by another parser:
what the compute ran is what the applier runs (a ``mariadb`` client, by contrast, lexes
``--`` followed by a control character differently from the server, which let a tenant's
comment become a statement run as root).

The private server is a helper that must not be worth breaking into:

- it runs as the unprivileged compute user when Selkie is root (as computes do);
- its whole environment is a search path (no archive keys, tokens or store URLs);
- no TCP listener (``skip_networking``), a unix socket in a private directory;
- ``secure_file_priv`` is an empty private directory: no file is read or written outside;
- the applier's position is checked against the target, and the datadir's binary log
  gets the GTID state of the target (the transactions themselves are in the archive, as
  for a base image), so a compute on it goes on from there.

Crash safety is not the restore server's job (a restore cut short leaves only a staging
directory, which is removed): it applies with ``sync_binlog=0``,
``innodb_flush_log_at_trx_commit=0`` and no doublewrite buffer, and its clean shutdown
makes the datadir whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from selkie.archive.binlog import BINLOG_MAGIC, CHECKSUM_CRC32, fde_checksum_alg, rotate_event
from selkie.compute.identity import ComputeUser
from selkie.compute.mariadb import (
    COMPUTE_SERVER_ID,
    Sizing,
    durability_options,
    render_config,
)
from selkie.compute.procs import find_mariadbd, server_env, wait_for_handshake
from selkie.errors import StorageError

log = logging.getLogger(__name__)

PRIVATE_START_TIMEOUT = 120.0
PRIVATE_STOP_TIMEOUT = 120.0
# Not the compute's (1): a replica skips events of its own server id. Nor the safekeeper's.
RESTORE_SERVER_ID = 3
RELAY_BASENAME = "relay"
MASTER_LOG_NAME = "binlog.000001"
# Parallel apply: MariaDB's optimistic mode runs transactions side by side and commits them
# in order, retrying one that conflicted. On two cores it measured slower than the one SQL
# thread for small transactions (bench/replay.py: 15.4 vs 22.9 MiB/s with 4 threads) and
# level for bulk ones, so it is used where there are cores to spare.
PARALLEL_THREADS = 0 if (os.cpu_count() or 1) <= 2 else min(8, os.cpu_count() or 1)
PARALLEL_MODE = "optimistic"
# The restore server's memory: a bigger buffer pool than the smallest compute's (a restore
# writes a whole log's worth of pages). A larger redo log measured no faster.
RESTORE_CU = 0.5
# How often the wait for the applier looks at its status (seconds).
WAIT_SLICE = 0.5


@dataclass(frozen=True)
class Tools:
    """How restore servers are run: the binary, the OS user Selkie runs as (the server's
    admin through ``unix_socket`` authentication), and the unprivileged user the server
    runs as (None: as Selkie, when Selkie is not root or no such user can reach the data
    dir, as for computes)."""

    mariadbd: str = ""
    user: str = "root"
    identity: ComputeUser | None = None
    parallel_threads: int = PARALLEL_THREADS

    def resolve(self) -> Tools:
        return Tools(
            mariadbd=self.mariadbd or find_mariadbd(),
            user=self.user,
            identity=self.identity,
            parallel_threads=self.parallel_threads,
        )


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no error log)"
    useful = [x for x in text if "ERROR" in x] or text
    return "\n".join(useful[-lines:])


def _config(datadir: Path, run: Path, tools: Tools) -> str:
    extra = {
        **durability_options(semi_sync=False, sync_timeout_ms=1000),
        "server_id": str(RESTORE_SERVER_ID),
        # The replayed transactions are in the archive already: the datadir's binary log
        # only needs their GTID state, set once the applier is done (writing them again
        # would double what a restore writes).
        "log_slave_updates": "OFF",
        "sync_binlog": "0",
        # No flush at commit while the applier runs (apply() turns it off).
        "innodb_flush_log_at_trx_commit": "1",
        "innodb_doublewrite": "0",
        "skip_networking": "ON",
        "skip_slave_start": "ON",
        "secure_file_priv": str(run / "files"),
        "tmpdir": str(run / "tmp"),
        "relay_log": str(run / RELAY_BASENAME),
        "relay_log_index": str(run / f"{RELAY_BASENAME}.index"),
        "master_info_file": str(run / "master.info"),
        "relay_log_info_file": str(run / "relay-log.info"),
        "relay_log_purge": "OFF",
        "slave_parallel_threads": str(tools.parallel_threads),
        "slave_parallel_mode": PARALLEL_MODE,
        "slave_sql_verify_checksum": "ON",
        "innodb_buffer_pool_load_at_startup": "OFF",
        "innodb_buffer_pool_dump_at_shutdown": "OFF",
    }
    return render_config(
        sizing=Sizing.for_cu(RESTORE_CU),
        datadir=datadir,
        socket=run / "s.sock",
        port=0,
        pid_file=run / "mariadbd.pid",
        error_log=run / "error.log",
        run_as_root=os.geteuid() == 0 and tools.identity is None,
        os_user=tools.identity.name if tools.identity is not None else None,
        extra=extra,
    )


class ReplayServer:
    """A running private server on a datadir (see :func:`replay_server`)."""

    def __init__(self, run: Path, tools: Tools, proc: asyncio.subprocess.Process) -> None:
        self.run = run
        self.socket = run / "s.sock"
        self.tools = tools
        self.proc = proc
        self._relay_files: list[Path] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run statements as the server's admin; the last one's rows."""
        return await asyncio.to_thread(self._sql, statements)

    def _sql(self, statements: Sequence[str]) -> list[tuple[Any, ...]]:
        try:
            conn = pymysql.connect(
                unix_socket=str(self.socket), user=self.tools.user, autocommit=True
            )
        except pymysql.MySQLError as exc:
            raise StorageError(f"cannot reach the restore server: {exc}") from exc
        try:
            rows: list[tuple[Any, ...]] = []
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                    rows = list(cur.fetchall())
            return rows
        except pymysql.MySQLError as exc:
            raise StorageError(f"the restore server refused {statements[0]!r}: {exc}") from exc
        finally:
            conn.close()

    async def set_position(self, seq: int) -> None:
        """The datadir holds the timeline up to ``seq`` (an image carries no binary log,
        the applier writes none): its binary log goes on from there. The applier needs no
        start position: it applies what it is given, and says where it got to."""
        state = f"0-{COMPUTE_SERVER_ID}-{seq}" if seq else ""
        await self.sql(
            # A reset waits for InnoDB to have made its commits durable, which without a
            # flush at commit (while applying) happens once a second: flush now.
            "FLUSH ENGINE LOGS",
            "RESET MASTER",
            f"SET GLOBAL gtid_binlog_state = '{state}'",
            "SET GLOBAL gtid_slave_pos = ''",
        )

    def add_relay_log(self, fde: bytes, transactions: list[bytes]) -> None:
        """Write the transactions as the next relay log file (blocking). Files are applied
        in the order they were added, by :meth:`apply`."""
        path = self.run / f"{RELAY_BASENAME}.{len(self._relay_files) + 1:06d}"
        # A relay log names the primary's binary log its events came from (the applier
        # records where it is in it): the one virtual log of the timeline.
        rotate = rotate_event(
            MASTER_LOG_NAME,
            4,
            server_id=COMPUTE_SERVER_ID,
            checksum=fde_checksum_alg(fde) == CHECKSUM_CRC32,
        )
        # The events go as the compute wrote them (their checksums checked by the applier);
        # their log_pos name places in the compute's own files, which the applier only
        # records.
        with open(path, "wb") as fh:
            fh.write(BINLOG_MAGIC + fde + rotate)
            for events in transactions:
                fh.write(events)
        if self.tools.identity is not None:
            os.chown(path, self.tools.identity.uid, self.tools.identity.gid)
        self._relay_files.append(path)

    async def apply(self, last_seq: int, *, progress: Callable[[int], None] | None = None) -> None:
        """Run the SQL thread over the relay logs added, until the applier has
        transaction ``last_seq``; a StorageError naming the applier's error if it stops."""
        if not self._relay_files:
            return
        index = self.run / f"{RELAY_BASENAME}.index"
        await asyncio.to_thread(index.write_text, "".join(f"{p}\n" for p in self._relay_files))
        if self.tools.identity is not None:
            os.chown(index, self.tools.identity.uid, self.tools.identity.gid)
        await self.sql(
            # The applier never connects anywhere: only its SQL thread runs.
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = 9, "
            "MASTER_USER = 'selkie-replay', MASTER_USE_GTID = no, "
            f"RELAY_LOG_FILE = '{self._relay_files[0].name}', RELAY_LOG_POS = 4",
            "SET GLOBAL innodb_flush_log_at_trx_commit = 0",
            "START SLAVE SQL_THREAD",
        )
        want = f"0-{COMPUTE_SERVER_ID}-{last_seq}"
        while True:
            ((done,),) = await self.sql(f"SELECT MASTER_GTID_WAIT('{want}', {WAIT_SLICE})")
            if done == 0:
                break
            status = await self._slave_status()
            if status.get("Slave_SQL_Running") != "Yes":
                raise StorageError(
                    "replaying the log stopped at "
                    f"{status.get('Gtid_Slave_Pos') or '(the start)'}: "
                    f"{status.get('Last_SQL_Error') or _tail(self.run / 'error.log')}"
                )
            if progress is not None:
                progress(_seq_of(str(status.get("Gtid_Slave_Pos") or "")))
        await self.sql(
            "STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL innodb_flush_log_at_trx_commit = 1"
        )
        ((applied,),) = await self.sql("SELECT @@gtid_slave_pos")
        if applied != want:
            raise StorageError(f"the applier stopped at {applied or '(none)'}, expected {want}")

    async def _slave_status(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            conn = pymysql.connect(
                unix_socket=str(self.socket),
                user=self.tools.user,
                autocommit=True,
                cursorclass=pymysql.cursors.DictCursor,
            )
            try:
                with conn.cursor() as cur:
                    cur.execute("SHOW SLAVE STATUS")
                    row: dict[str, Any] | None = cur.fetchone()
                    return row or {}
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(read)
        except pymysql.MySQLError as exc:
            raise StorageError(f"cannot read the restore server's status: {exc}") from exc

    async def position(self) -> str:
        ((pos,),) = await self.sql("SELECT @@gtid_binlog_pos")
        return str(pos or "")


def _seq_of(gtid_pos: str) -> int:
    for part in gtid_pos.split(","):
        bits = part.strip().split("-")
        if len(bits) == 3 and bits[0] == "0" and bits[2].isdigit():
            return int(bits[2])
    return 0


@asynccontextmanager
async def replay_server(datadir: Path, tools: Tools) -> AsyncIterator[ReplayServer]:
    """A private ``mariadbd`` on ``datadir`` (see the module's docstring); shut down
    cleanly on exit, and its private directory removed."""
    tools = tools.resolve()
    run = Path(tempfile.mkdtemp(prefix="selkie-restore-"))
    try:
        async with _without_paths(run, datadir), _running(datadir, run, tools) as server:
            yield server
    finally:
        await asyncio.to_thread(shutil.rmtree, run, True)


@asynccontextmanager
async def _without_paths(*paths: Path) -> AsyncIterator[None]:
    """The restore server's errors (its error log, the client's) name this host's paths,
    which a tenant who asked for the restore must not see: they become ``…``."""
    try:
        yield
    except StorageError as exc:
        message = exc.message
        for path in paths:
            message = message.replace(str(path), "…")
        raise StorageError(message) from exc


@asynccontextmanager
async def _running(datadir: Path, run: Path, tools: Tools) -> AsyncIterator[ReplayServer]:
    for sub in ("files", "tmp"):
        (run / sub).mkdir()
    cnf = run / "my.cnf"
    cnf.write_text(_config(datadir, run, tools))
    if tools.identity is not None:
        await asyncio.to_thread(tools.identity.hand_over, datadir, run)
    proc = await asyncio.create_subprocess_exec(
        tools.mariadbd,
        f"--defaults-file={cnf}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        env=server_env(),
    )
    server = ReplayServer(run, tools, proc)
    try:
        deadline = time.monotonic() + PRIVATE_START_TIMEOUT
        while not (server.socket.exists() and await wait_for_handshake(server.socket)):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise StorageError("the restore server did not start: " + _tail(run / "error.log"))
            await asyncio.sleep(0.01)
        yield server
    finally:
        await _shut_down(proc, run)


async def _shut_down(proc: asyncio.subprocess.Process, run: Path) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), PRIVATE_STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise StorageError("the restore server did not shut down cleanly") from None
    if proc.returncode not in (0, None):
        raise StorageError(
            f"the restore server exited with status {proc.returncode}: " + _tail(run / "error.log")
        )


__all__ = ["RESTORE_SERVER_ID", "ReplayServer", "Tools", "replay_server"]
