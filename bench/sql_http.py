"""SQL over HTTP against the MySQL protocol, in one run: a point select in a loop from 1 and
32 concurrent callers, through database-js over HTTP (keep-alive), the same requests from
node:http (a lighter client: database-js's fetch is the limit on two cores), through the MySQL proxy
(mysql2), and straight to the compute (mysql2), all from node (bench/js, one runtime for
every protocol). Prints requests/s, p50 and p99, and the ratios to the proxy.

    make bench-deps && .venv/bin/python bench/sql_http.py [--seconds 10] [--cu 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from pathlib import Path
from urllib.parse import quote

from _common import bench_platform, run

JS = Path(__file__).resolve().parent / "js"


def load(mode: str, url: str, callers: int, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        ["node", str(JS / "load.mjs"), mode, url, str(callers), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds * 4 + 120,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


async def main(seconds: float, cu: float) -> None:
    results: dict[tuple[str, int], dict[str, float]] = {}
    async with bench_platform(
        autoscaling_limit_min_cu=cu, autoscaling_limit_max_cu=cu, suspend_timeout_seconds=3600
    ) as b:
        platform, ep = b.platform, b.endpoint_id
        assert platform.proxy is not None and platform.proxy.http is not None
        await platform.lifecycle.start(ep)
        (rows,) = await platform.driver.execute(ep, ["SELECT @@port"])
        compute_port = int(rows[0][0])
        await platform.driver.execute(
            ep,
            [
                f"CREATE TABLE {b.database}.pt (id INT PRIMARY KEY, v VARCHAR(32))",
                f"INSERT INTO {b.database}.pt SELECT seq, MD5(seq) FROM {b.database}.seq_1_to_1000",
            ],
        )
        user, password = f"{ep}.{b.role}", quote(b.password, safe="")
        urls = {
            "http (database-js)": (
                "http",
                f"http://{quote(user, safe='')}:{password}@127.0.0.1:{platform.proxy.http.port}",
            ),
            "http (node:http)": (
                "http-raw",
                f"http://{quote(user, safe='')}:{password}@127.0.0.1:{platform.proxy.http.port}",
            ),
            "mysql via proxy": (
                "mysql",
                f"mysql://{quote(user, safe='')}:{password}@127.0.0.1:{b.proxy_port}/{b.database}",
            ),
            "mysql direct": (
                "mysql",
                f"mysql://{b.role}:{password}@127.0.0.1:{compute_port}/{b.database}",
            ),
        }
        for callers in (1, 32):
            for name, (mode, url) in urls.items():
                results[(name, callers)] = await asyncio.to_thread(
                    load, mode, url, callers, seconds
                )
    print(f"\npoint select, {seconds:.0f} s per cell, {cu} CU compute, node 20 clients\n")
    print(f"{'path':<22}{'callers':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'÷ proxy':>9}")
    for (name, callers), r in results.items():
        proxy = results[("mysql via proxy", callers)]["rps"]
        print(
            f"{name:<22}{callers:>8}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['rps'] / proxy:>8.2f}x" + (f"  ({r['errors']:.0f} errors)" if r["errors"] else "")
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--cu", type=float, default=1)
    a = parser.parse_args()
    run(main(a.seconds, a.cu))
