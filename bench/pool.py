"""Transaction pooling under sysbench: N client threads through the pooler over at most 20
backend connections, against the same N threads connected straight to the compute; direct and
pooled interleaved, several rounds, medians.

    make bench-deps
    .venv/bin/python bench/pool.py [--clients 200,64] [--backends 20] [--time 10] [--rounds 3]
        [--tests oltp_point_select,oltp_read_only]

The proxy runs in this process, so the pooler's CPU is this process's (``/proc/self/stat``)
while sysbench runs through it; the same figure during the direct runs is what the rest of
the platform spends meanwhile (the scheduler, the metering), for scale. The compute is 1 CU,
default configuration (cgroups on where writable). Any sysbench error, or more backends
than the cap at any moment, fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics

from _common import bench_platform, cpu_seconds, run, sysbench

from selkie.control.bootstrap import local_principal

Key = tuple[str, int, str]  # test, clients, direct|pooled


def med(values: list[float]) -> float:
    return statistics.median(values)


async def main(a: argparse.Namespace) -> None:
    if not shutil.which("sysbench"):
        raise SystemExit("sysbench is missing: run `make bench-deps`")
    tests = a.tests.split(",")
    clients = [int(n) for n in a.clients.split(",")]
    env = {"SELKIE_POOLER_MAX_BACKENDS": str(a.backends), "SELKIE_POOLER_WAIT_TIMEOUT": "60"}
    qps: dict[Key, list[float]] = {}
    p95: dict[Key, list[float]] = {}
    cpu: dict[Key, list[float]] = {}
    async with bench_platform(
        env=env,
        autoscaling_limit_min_cu=1,
        autoscaling_limit_max_cu=1,
        suspend_timeout_seconds=-1,
    ) as b:
        platform, ep = b.platform, b.endpoint_id
        who = local_principal(platform.control)
        await asyncio.to_thread(
            platform.control.endpoints.update,
            who,
            b.created.project.id,
            ep,
            {"pooler_enabled": True, "pooler_mode": "transaction"},
        )
        await platform.lifecycle.start(ep)
        info = await platform.driver.inspect(ep)
        assert info.port is not None and platform.proxy is not None
        common = dict(password=b.password, db=b.database, seconds=a.time)
        await sysbench(
            "oltp_read_only", port=info.port, user=b.role, command="prepare", threads=1, **common
        )
        targets = {"direct": (info.port, b.role), "pooled": (b.proxy_port, f"{ep}-pooler.{b.role}")}
        for n in clients:
            for test in tests:
                for _ in range(a.rounds):
                    for name, (port, user) in targets.items():
                        before = cpu_seconds(os.getpid())
                        q, tail, err = await sysbench(
                            test, port=port, user=user, threads=n, **common
                        )
                        spent = cpu_seconds(os.getpid()) - before
                        if err or not q:
                            raise SystemExit(f"sysbench {test} ({name}, {n} clients):\n{err}")
                        key = (test, n, name)
                        qps.setdefault(key, []).append(q)
                        p95.setdefault(key, []).append(tail)
                        cpu.setdefault(key, []).append(spent / (q * a.time) * 1e6)
        peak = platform.proxy.pools[ep].metrics()["backends_peak"]
        if peak > a.backends:
            raise SystemExit(f"the pool opened {peak} backends, over its cap of {a.backends}")

    print(
        f"\nsysbench, {a.time}s x {a.rounds} interleaved rounds (medians), 1 CU compute, "
        f"{os.cpu_count()} cores; pooled = transaction pooling over at most {a.backends} "
        f"backends (peak {peak}); proxy-process CPU in ms per 1000 queries\n"
    )
    print(
        f"{'test':<19}{'clients':>8}{'direct qps':>12}{'p95':>8}{'pooled qps':>12}{'p95':>8}"
        f"{'ratio':>7}{'p95 x':>7}{'CPU d/p':>14}   rounds (pooled/direct)"
    )
    for n in clients:
        for test in tests:
            d, p = (test, n, "direct"), (test, n, "pooled")
            ratios = " ".join(f"{x / y:.2f}" for x, y in zip(qps[p], qps[d], strict=True))
            print(
                f"{test:<19}{n:>8}{med(qps[d]):>12.0f}{med(p95[d]):>8.1f}{med(qps[p]):>12.0f}"
                f"{med(p95[p]):>8.1f}{med(qps[p]) / med(qps[d]):>7.2f}"
                f"{med(p95[p]) / med(p95[d]):>7.2f}{med(cpu[d]):>7.1f}/{med(cpu[p]):<6.1f}"
                f"   {ratios}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="200,64", help="client thread counts, comma-separated")
    parser.add_argument("--backends", type=int, default=20)
    parser.add_argument("--time", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tests", default="oltp_point_select,oltp_read_only")
    run(main(parser.parse_args()))
