"""Proxy throughput: sysbench oltp_point_select and oltp_read_only (8 threads) straight to a
compute, through HAProxy in TCP mode, and through Selkie's proxy, interleaved in one run.

    make bench-deps                      # sysbench and haproxy from Debian
    .venv/bin/python bench/proxy.py [--time 10] [--rounds 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
from pathlib import Path

from _common import bench_platform, run, sysbench

from selkie.compute.procs import free_port


async def start_haproxy(work: Path, backend_port: int) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    cfg = work / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 4096\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n"
        f"listen mysql\n  bind 127.0.0.1:{port}\n  server compute 127.0.0.1:{backend_port}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "haproxy",
        "-db",
        "-f",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)
    return proc, port


async def main(seconds: int, rounds: int, threads: int) -> None:
    for tool in ("sysbench", "haproxy"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: run `make bench-deps`")
    async with bench_platform(
        autoscaling_limit_min_cu=1, autoscaling_limit_max_cu=1, suspend_timeout_seconds=-1
    ) as b:
        platform, ep, role = b.platform, b.endpoint_id, b.role
        await platform.lifecycle.start(ep)
        info = await platform.driver.inspect(ep)
        assert info.port is not None
        haproxy, haproxy_port = await start_haproxy(Path(platform.settings.data_dir), info.port)
        try:
            targets = {
                "direct": (info.port, role),
                "haproxy": (haproxy_port, role),
                "selkie": (b.proxy_port, f"{ep}.{role}"),
            }
            common = dict(password=b.password, db=b.database, threads=threads, seconds=seconds)
            await sysbench("oltp_read_only", port=info.port, user=role, command="prepare", **common)  # type: ignore[arg-type]
            results: dict[tuple[str, str], list[float]] = {}
            for test in ("oltp_point_select", "oltp_read_only"):
                for _ in range(rounds):
                    for name, (port, user) in targets.items():
                        qps, _, err = await sysbench(test, port=port, user=user, **common)  # type: ignore[arg-type]
                        if err:
                            raise SystemExit(f"sysbench {test} via {name} failed:\n{err}")
                        results.setdefault((test, name), []).append(qps)
        finally:
            haproxy.terminate()
            await haproxy.wait()

    print(
        f"\nsysbench, {threads} threads, {seconds}s x {rounds} interleaved rounds, "
        f"1 CU compute, {os.cpu_count()} cores (median qps)\n"
    )
    print(
        f"{'test':<20}{'direct':>11}{'haproxy':>11}{'selkie':>11}"
        f"{'haproxy/direct':>16}{'selkie/direct':>15}{'selkie/haproxy':>16}"
    )
    for test in ("oltp_point_select", "oltp_read_only"):
        d, h, s = (statistics.median(results[(test, n)]) for n in ("direct", "haproxy", "selkie"))
        print(f"{test:<20}{d:>11.0f}{h:>11.0f}{s:>11.0f}{h / d:>16.2f}{s / d:>15.2f}{s / h:>16.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    a = parser.parse_args()
    sys.exit(run(main(a.time, a.rounds, a.threads)))
