"""What the benchmark scripts share: percentiles, and a whole platform in a temporary data
dir with one project whose endpoint they measure."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from selkie import eventloop
from selkie.compute.local import free_port
from selkie.config import load_settings
from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform

TABLE_SIZE = 10000
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
    return float(qps.group(1)) if qps else 0.0, float(p95.group(1)) if p95 else 0.0, ""


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
