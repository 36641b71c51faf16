"""Transaction pooling under sysbench: 200 client threads through the pooler over 20 backend
connections, against the same 200 threads connected straight to the compute, one run.

    make bench-deps
    .venv/bin/python bench/pool.py [--threads 200] [--backends 20] [--time 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil

from _common import bench_platform, run, sysbench

from selkie.control.bootstrap import local_principal


async def main(threads: int, backends: int, seconds: int) -> None:
    if not shutil.which("sysbench"):
        raise SystemExit("sysbench is missing: run `make bench-deps`")
    env = {"SELKIE_POOLER_MAX_BACKENDS": str(backends), "SELKIE_POOLER_WAIT_TIMEOUT": "60"}
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
        common = dict(password=b.password, db=b.database, threads=threads, seconds=seconds)
        await sysbench("oltp_read_only", port=info.port, user=b.role, command="prepare", **common)  # type: ignore[arg-type]
        rows = []
        for test in ("oltp_point_select", "oltp_read_only"):
            direct = await sysbench(test, port=info.port, user=b.role, **common)  # type: ignore[arg-type]
            pooled = await sysbench(test, port=b.proxy_port, user=f"{ep}-pooler.{b.role}", **common)  # type: ignore[arg-type]
            metrics = platform.proxy.pools[ep].metrics()
            rows.append((test, direct, pooled, metrics["backends_peak"]))
            for _, _, err in (direct, pooled):
                if err:
                    print(err)

    print(
        f"\nsysbench, {threads} client threads, {seconds}s, 1 CU compute: direct = {threads} "
        f"connections to the compute; pooled = transaction pooling over at most {backends}\n"
    )
    print(
        f"{'test':<20}{'direct qps':>12}{'p95 ms':>9}{'pooled qps':>12}{'p95 ms':>9}"
        f"{'ratio':>8}{'backends':>10}"
    )
    for test, (dq, dp, _), (pq, pp, _), peak in rows:
        ratio = pq / dq if dq else 0.0
        print(f"{test:<20}{dq:>12.0f}{dp:>9.1f}{pq:>12.0f}{pp:>9.1f}{ratio:>8.2f}{peak:>10}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--backends", type=int, default=20)
    parser.add_argument("--time", type=int, default=10)
    a = parser.parse_args()
    run(main(a.threads, a.backends, a.time))
