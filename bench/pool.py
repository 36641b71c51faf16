"""Transaction pooling under sysbench: 200 client threads through the pooler over 20 backend
connections, against the same 200 threads connected straight to the compute, one run.

    make bench-deps
    .venv/bin/python bench/pool.py [--threads 200] [--backends 20] [--time 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile

from _common import sysbench

from selkie.compute.local import free_port
from selkie.config import load_settings
from selkie.control.bootstrap import local_principal
from selkie.server import Platform


async def main(threads: int, backends: int, seconds: int) -> None:
    if not shutil.which("sysbench"):
        raise SystemExit("sysbench is missing: run `make bench-deps`")
    with tempfile.TemporaryDirectory(prefix="selkie-bench-") as tmp:
        settings = load_settings(
            environ={
                "SELKIE_DATA_DIR": tmp,
                "SELKIE_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
                "SELKIE_COMPUTE_CGROUPS": "0",
                "SELKIE_LOG_LEVEL": "warning",
                "SELKIE_POOLER_MAX_BACKENDS": str(backends),
                "SELKIE_POOLER_WAIT_TIMEOUT": "60",
            }
        )
        platform = Platform.open(settings)
        await platform.start(proxy=True)
        try:
            who = local_principal(platform.control)
            created = await asyncio.to_thread(
                platform.control.projects.create,
                who,
                name="pool",
                default_endpoint_settings={
                    "autoscaling_limit_min_cu": 1,
                    "autoscaling_limit_max_cu": 1,
                    "suspend_timeout_seconds": -1,
                },
            )
            ep = created.endpoints[0].id
            await asyncio.to_thread(
                platform.control.endpoints.update,
                who,
                created.project.id,
                ep,
                {"pooler_enabled": True, "pooler_mode": "transaction"},
            )
            role, password = created.roles[0].name, created.roles[0].password or ""
            dbname = created.databases[0].name
            await platform.lifecycle.start(ep)
            info = await platform.driver.inspect(ep)
            assert info.port is not None and platform.proxy is not None
            common = dict(password=password, db=dbname, threads=threads, seconds=seconds)
            await sysbench("oltp_read_only", port=info.port, user=role, command="prepare", **common)  # type: ignore[arg-type]
            rows = []
            for test in ("oltp_point_select", "oltp_read_only"):
                direct = await sysbench(test, port=info.port, user=role, **common)  # type: ignore[arg-type]
                pooled = await sysbench(
                    test, port=platform.proxy.port, user=f"{ep}-pooler.{role}", **common
                )  # type: ignore[arg-type]
                metrics = platform.proxy.pools[ep].metrics()
                rows.append((test, direct, pooled, metrics["backends_peak"]))
                for _, _, err in (direct, pooled):
                    if err:
                        print(err)
        finally:
            await platform.stop()
            platform.close()

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
    asyncio.run(main(a.threads, a.backends, a.time))
