"""What the benchmark scripts share: percentiles, and a whole platform in a temporary data
dir with one project whose endpoint they measure."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pymysql

from selkie import eventloop
from selkie.compute.cgroups import Cgroups
from selkie.compute.local import wait_for_handshake
from selkie.compute.mariadb import Sizing, render_config
from selkie.compute.procs import free_port
from selkie.config import load_settings
from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform

TABLE_SIZE = 10000


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that turn a default off, for a second column beside the default one."""
    parser.add_argument("--no-cgroups", action="store_true", help="computes without limits")
    parser.add_argument("--no-boost", action="store_true", help="starts inside the CPU quota")


def config_env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    if args.no_cgroups:
        env["SELKIE_COMPUTE_CGROUPS"] = "0"
    if args.no_boost:
        env["SELKIE_COMPUTE_STARTUP_BOOST"] = "0"
    return env


def describe(env: dict[str, str]) -> str:
    """The configuration a run measured, as its heading says it."""
    cgroups = env.get("SELKIE_COMPUTE_CGROUPS") != "0" and Cgroups(enabled=True).mode != "off"
    boost = env.get("SELKIE_COMPUTE_STARTUP_BOOST") != "0"
    on = {True: "on", False: "off"}
    return f"cgroups {on[cgroups]}, startup boost {on[boost and cgroups]}"


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark on the event loop Selkie's servers use (SELKIE_EVENT_LOOP, default
    auto: uvloop when installed), so the figures are those of what ships."""
    return eventloop.run(main, os.environ.get("SELKIE_EVENT_LOOP", "auto"))


async def sysbench(
    test: str,
    *,
    port: int,
    user: str,
    password: str,
    db: str,
    threads: int,
    seconds: int,
    command: str = "run",
    ps_mode: str = "auto",
) -> tuple[float, float, str]:
    proc = await asyncio.create_subprocess_exec(
        "sysbench",
        test,
        "--mysql-host=127.0.0.1",
        f"--mysql-port={port}",
        f"--mysql-user={user}",
        f"--mysql-password={password}",
        f"--mysql-db={db}",
        "--mysql-ssl=off",
        f"--threads={threads}",
        f"--time={seconds}",
        "--percentile=95",
        f"--table-size={TABLE_SIZE}",
        "--tables=1",
        # auto: prepared statements; disable: query texts (COM_QUERY), as many drivers send.
        f"--db-ps-mode={ps_mode}",
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        return 0.0, 0.0, text[-1500:]
    if command != "run":
        return 0.0, 0.0, ""
    qps = re.search(r"queries:\s+\d+\s+\(([\d.]+) per sec", text)
    p95 = re.search(r"95th percentile:\s+([\d.]+)", text)
    errors = re.search(r"ignored errors:\s+(\d+)", text)
    # Errors sysbench ignored (deadlocks, lost connections it retried) are errors here.
    err = f"sysbench ignored {errors.group(1)} errors" if errors and errors.group(1) != "0" else ""
    return float(qps.group(1)) if qps else 0.0, float(p95.group(1)) if p95 else 0.0, err


def mysql(port: int, user: str, password: str, db: str, **options: Any) -> pymysql.Connection:
    """A plaintext MySQL connection to this machine (``options``: timeouts, autocommit)."""
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        password=password,
        database=db,
        ssl_disabled=True,
        **options,
    )


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def loadavg() -> str:
    """The machine's load averages (1, 5, 15 min), to print beside a figure."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


@dataclass
class Bench:
    platform: Platform
    created: Created

    @property
    def endpoint_id(self) -> str:
        return self.created.endpoints[0].id

    @property
    def role(self) -> str:
        return self.created.roles[0].name

    @property
    def password(self) -> str:
        return self.created.roles[0].password or ""

    @property
    def database(self) -> str:
        return self.created.databases[0].name

    @property
    def proxy_port(self) -> int:
        assert self.platform.proxy is not None
        return self.platform.proxy.port


@asynccontextmanager
async def bench_platform(
    *, proxy: bool = True, env: dict[str, str] | None = None, **endpoint: Any
) -> AsyncIterator[Bench]:
    """A platform in its default configuration (cgroups on where writable; quiet logs) and
    a project; ``env`` adds settings (a --no-cgroups column, say), ``endpoint`` are its
    default endpoint settings (autoscaling limits, suspend timeout)."""
    with tempfile.TemporaryDirectory(prefix="selkie-bench-") as tmp:
        settings = load_settings(
            environ={
                "SELKIE_DATA_DIR": tmp,
                "SELKIE_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
                "SELKIE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
                "SELKIE_LOG_LEVEL": "warning",
                **(env or {}),
            }
        )
        platform = Platform.open(settings)
        await platform.start(proxy=proxy)
        try:
            who = local_principal(platform.control)
            created = await asyncio.to_thread(
                platform.control.projects.create,
                who,
                name="bench",
                default_endpoint_settings=endpoint or None,
            )
            yield Bench(platform=platform, created=created)
        finally:
            await platform.stop()
            platform.close()


async def bare_cycle(template: Path, work: Path, mariadbd: str) -> tuple[float, float]:
    """Start a plain mariadbd on a datadir copy until it greets, then SIGTERM it."""
    datadir = work / "bare"
    if not datadir.exists():
        shutil.copytree(template, datadir)
    sock = work / "bare.sock"
    cnf = work / "bare.cnf"
    cnf.write_text(
        render_config(
            sizing=Sizing.for_cu(0.25),
            datadir=datadir,
            socket=sock,
            port=free_port(),
            pid_file=work / "bare.pid",
            error_log=work / "bare.err",
            run_as_root=os.geteuid() == 0,
        )
    )
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        mariadbd, f"--defaults-file={cnf}", start_new_session=True
    )
    while not (sock.exists() and await wait_for_handshake(sock)):
        await asyncio.sleep(0.002)
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    return started * 1000, (time.perf_counter() - t1) * 1000
