"""Proxy throughput and cost: sysbench straight to a compute, through HAProxy in TCP mode, and
through Selkie's proxy with each session relay (the compiled one and the Python one),
interleaved in one run; qps, and the CPU each relay spent per 1000 queries.

    make bench-deps                      # sysbench and haproxy from Debian
    .venv/bin/python bench/proxy.py [--time 10] [--rounds 3] [--threads 1,8] [--cu 2]
        [--tests oltp_point_select,oltp_read_only] [--relays c,python] [--haproxy-threads 1]
        [--ps-mode auto|disable]

The proxy runs in this process, so its CPU is this process's (``/proc/self/stat``) while
sysbench runs through it; HAProxy's is its process's. Both relay kinds run in the same
proxy, switched between rounds (``proxy_relay``, SELKIE_PROXY_RELAY, picks the one
``selkie up`` uses).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
from pathlib import Path

from _common import bench_platform, cpu_seconds, run, sysbench

from selkie.compute.procs import free_port
from selkie.proxy.crelay import relay_class


async def start_haproxy(
    work: Path, backend_port: int, threads: int
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    cfg = work / "haproxy.cfg"
    cfg.write_text(
        f"global\n  maxconn 4096\n  nbthread {threads}\n"
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


async def main(a: argparse.Namespace) -> None:
    for tool in ("sysbench", "haproxy"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: run `make bench-deps`")
    tests = a.tests.split(",")
    thread_counts = [int(t) for t in a.threads.split(",")]
    relays = {name: relay_class(name) for name in a.relays.split(",")}
    async with bench_platform(
        autoscaling_limit_min_cu=a.cu, autoscaling_limit_max_cu=a.cu, suspend_timeout_seconds=-1
    ) as b:
        platform, ep, role = b.platform, b.endpoint_id, b.role
        proxy = platform.proxy
        assert proxy is not None
        await platform.lifecycle.start(ep)
        info = await platform.driver.inspect(ep)
        assert info.port is not None
        work = Path(platform.settings.data_dir)
        haproxy, haproxy_port = await start_haproxy(work, info.port, a.haproxy_threads)
        # name -> (port, user, pid whose CPU is the relay's, relay class to switch to)
        targets: dict[str, tuple[int, str, int | None, str | None]] = {
            "direct": (info.port, role, None, None),
            "haproxy": (haproxy_port, role, haproxy.pid, None),
        }
        for name in relays:
            targets[f"selkie-{name}"] = (b.proxy_port, f"{ep}.{role}", os.getpid(), name)
        qps: dict[tuple[str, int, str], list[float]] = {}
        cpu: dict[tuple[str, int, str], list[float]] = {}
        try:
            common = dict(password=b.password, db=b.database, seconds=a.time)
            await sysbench(
                "oltp_read_only", port=info.port, user=role, command="prepare", threads=1, **common
            )
            for test in tests:
                for threads in thread_counts:
                    for _ in range(a.rounds):
                        for name, (port, user, pid, relay) in targets.items():
                            if relay is not None:
                                proxy.passthrough.relay_class = relays[relay]
                            before = cpu_seconds(pid) if pid else 0.0
                            q, _, err = await sysbench(
                                test,
                                port=port,
                                user=user,
                                threads=threads,
                                ps_mode=a.ps_mode,
                                **common,
                            )
                            if err:
                                raise SystemExit(f"sysbench {test} via {name} failed:\n{err}")
                            key = (test, threads, name)
                            qps.setdefault(key, []).append(q)
                            if pid:
                                spent = cpu_seconds(pid) - before
                                cpu.setdefault(key, []).append(spent * 1000 / (q * a.time) * 1000)
        finally:
            haproxy.terminate()
            await haproxy.wait()

    print(
        f"\nsysbench (ps-mode {a.ps_mode}), {a.time}s x {a.rounds} interleaved rounds, "
        f"{a.cu} CU compute, "
        f"HAProxy with {a.haproxy_threads} thread(s), {os.cpu_count()} cores (medians)\n"
    )
    names = list(targets)
    print(f"{'test':<19}{'thr':>4}" + "".join(f"{n:>15}" for n in names) + "   (qps)")
    for test in tests:
        for threads in thread_counts:
            row = [statistics.median(qps[(test, threads, n)]) for n in names]
            print(f"{test:<19}{threads:>4}" + "".join(f"{v:>15.0f}" for v in row))
    print(f"\n{'relay CPU ms / 1000 queries':<23}" + "".join(f"{n:>15}" for n in names[1:]))
    for test in tests:
        for threads in thread_counts:
            row = [statistics.median(cpu[(test, threads, n)]) for n in names[1:]]
            print(f"{test:<19}{threads:>4}" + "".join(f"{v:>15.1f}" for v in row))
    print("\nratios to HAProxy (qps; CPU per query)")
    for test in tests:
        for threads in thread_counts:
            h = statistics.median(qps[(test, threads, "haproxy")])
            hc = statistics.median(cpu[(test, threads, "haproxy")])
            parts = []
            for n in names[2:]:
                s = statistics.median(qps[(test, threads, n)])
                sc = statistics.median(cpu[(test, threads, n)])
                parts.append(f"{n} {s / h:.2f}x qps, {sc / hc:.2f}x CPU")
            print(f"{test:<19}{threads:>4}   " + "; ".join(parts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,8", help="comma-separated sysbench thread counts")
    parser.add_argument("--cu", type=float, default=2.0, help="the compute's size")
    parser.add_argument("--tests", default="oltp_point_select,oltp_read_only")
    parser.add_argument("--relays", default="c,python", help="Selkie relays to measure")
    parser.add_argument("--haproxy-threads", type=int, default=1)
    parser.add_argument(
        "--ps-mode",
        choices=["auto", "disable"],
        default="auto",
        help="sysbench's statements: prepared (auto) or query texts (disable)",
    )
    sys.exit(run(main(parser.parse_args())))
