"""Real MariaDB clients of the binlog server: a ``mariadbd`` replica of its own (a copy of
the template datadir, its socket in a short private directory, run as ``mysql`` when the
tests run as root) and ``mariadb-binlog --read-from-remote-server``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from selkie.compute.mariadb import REDO_LOG_SIZE
from tests.helpers import free_port

STOP_TIMEOUT = 20.0


class Replica:
    def __init__(self, run: Path, proc: asyncio.subprocess.Process) -> None:
        self.run = run
        self.proc = proc
        self.socket = run / "s.sock"
        self.port = 0

    async def sql(self, *statements: str) -> list[list[str]]:
        """Run statements as root through the socket; the rows of the last one."""
        proc = await asyncio.create_subprocess_exec(
            "mariadb",
            "--no-defaults",
            f"--socket={self.socket}",
            "--user=root",
            "--batch",
            "--raw",
            "--skip-column-names",
            "-e",
            ";\n".join(statements),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise AssertionError(f"replica: {statements}: {err.decode()}")
        return [line.split("\t") for line in out.decode().splitlines()]

    async def slave_status(self) -> dict[str, str]:
        proc = await asyncio.create_subprocess_exec(
            "mariadb",
            "--no-defaults",
            f"--socket={self.socket}",
            "--user=root",
            "--batch",
            "--raw",
            "-e",
            "SHOW SLAVE STATUS",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        lines = out.decode().splitlines()
        if len(lines) < 2:
            return {}
        return dict(zip(lines[0].split("\t"), lines[1].split("\t"), strict=False))

    async def wait_for(
        self, query: str, expected: list[list[str]], *, timeout: float = 30.0
    ) -> None:
        """Until ``query`` returns ``expected`` (the replica has applied what it should)."""
        deadline = time.monotonic() + timeout
        got: list[list[str]] | str = []
        while time.monotonic() < deadline:
            try:
                got = await self.sql(query)
            except AssertionError as exc:
                got = str(exc)  # the table does not exist yet
            if got == expected:
                return
            await asyncio.sleep(0.1)
        status = await self.slave_status()
        raise AssertionError(
            f"replica: {query} gave {got}, not {expected}; IO: {status.get('Last_IO_Error')!r} "
            f"SQL: {status.get('Last_SQL_Error')!r}\n{self.error_log()}"
        )

    async def wait_io_error(self, timeout: float = 30.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = await self.slave_status()
            if status.get("Last_IO_Errno", "0") != "0":
                return int(status["Last_IO_Errno"]), status["Last_IO_Error"]
            await asyncio.sleep(0.1)
        raise AssertionError(f"replica: no IO error: {await self.slave_status()}")

    def error_log(self) -> str:
        try:
            return (self.run / "error.log").read_text()[-4000:]
        except OSError:
            return ""


@asynccontextmanager
async def replica(
    template: Path, *, server_id: int, options: tuple[str, ...] = ()
) -> AsyncIterator[Replica]:
    """A ``mariadbd`` on a copy of ``template`` with ``skip-slave-start`` (and ``options``),
    stopped (TERM, then KILL) and removed afterwards."""
    # A short path: a unix socket's path is limited to about 100 bytes.
    run = Path(tempfile.mkdtemp(prefix="slk-rep-", dir="/tmp"))
    proc: asyncio.subprocess.Process | None = None
    try:
        port = free_port()
        datadir = run / "data"
        shutil.copytree(template, datadir, symlinks=True)
        (run / "tmp").mkdir()
        argv = [
            shutil.which("mariadbd") or "/usr/sbin/mariadbd",
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={run / 's.sock'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={run / 'mariadbd.pid'}",
            f"--log-error={run / 'error.log'}",
            f"--tmpdir={run / 'tmp'}",
            f"--server-id={server_id}",
            "--skip-slave-start",
            "--skip-name-resolve",
            "--performance-schema=OFF",
            f"--innodb-log-file-size={REDO_LOG_SIZE}",
            "--innodb-buffer-pool-size=64M",
            "--relay-log=relay",
            *options,
        ]
        if os.geteuid() == 0:
            # Not as root: the server drops to mysql, which must own its files.
            user = pwd.getpwnam("mysql")
            for top, dirs, files in os.walk(run):
                os.chown(top, user.pw_uid, user.pw_gid)
                for name in (*dirs, *files):
                    os.chown(os.path.join(top, name), user.pw_uid, user.pw_gid)
            argv.append("--user=mysql")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        rep = Replica(run, proc)
        rep.port = port
        deadline = time.monotonic() + 60
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"the replica did not start:\n{rep.error_log()}")
            if rep.socket.exists():
                with contextlib.suppress(AssertionError):
                    await rep.sql("SELECT 1")
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the replica did not answer:\n{rep.error_log()}")
            await asyncio.sleep(0.1)
        yield rep
    finally:
        if proc is not None:
            await stop_process(proc)
        shutil.rmtree(run, ignore_errors=True)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL of the process group if it is still there; always reaped."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def follow_replica(
    rep: Replica, port: int, user: str, password: str, gtid_pos: str, *, until: str = ""
) -> None:
    """Point the replica at the binlog server (GTID positioning from ``gtid_pos``) and
    start it (``until`` a GTID position, when given)."""
    await rep.sql(
        f"SET GLOBAL gtid_slave_pos = '{gtid_pos}'",
        f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={port}, "
        f"MASTER_USER='{user}', MASTER_PASSWORD='{password}', MASTER_USE_GTID=slave_pos, "
        "MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=0.5",
        f"START SLAVE UNTIL master_gtid_pos = '{until}'" if until else "START SLAVE",
    )


class BinlogReader:
    """``mariadb-binlog --read-from-remote-server`` running against the binlog server;
    its decoded output as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output = ""
        self.errors = ""

    async def read_until(self, *needles: str, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while not all(n in self.output for n in needles):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"mariadb-binlog printed no {needles}:\n{self.output[-3000:]}")
            try:
                chunk = await asyncio.wait_for(self.proc.stdout.read(1 << 16), left)
            except TimeoutError:
                continue
            if not chunk:
                assert self.proc.stderr is not None
                self.errors = (await self.proc.stderr.read()).decode()
                raise AssertionError(
                    f"mariadb-binlog ended ({await self.proc.wait()}) before {needles}: "
                    f"{self.errors}\n{self.output[-3000:]}"
                )
            self.output += chunk.decode(errors="replace")
        return self.output


@asynccontextmanager
async def binlog_reader(
    port: int, user: str, password: str, *args: str
) -> AsyncIterator[BinlogReader]:
    proc = await asyncio.create_subprocess_exec(
        "mariadb-binlog",
        "--no-defaults",
        "--read-from-remote-server",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--user={user}",
        f"--password={password}",
        "-v",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield BinlogReader(proc)
    finally:
        await stop_process(proc, timeout=5)
