"""Connection storm: N clients connect at once to a suspended endpoint. Prints how many
compute starts it caused (must be 1), errors (must be 0), and the time to first row, against
the same storm on the endpoint once it is active.

    .venv/bin/python bench/storm.py [--clients 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _common import bench_platform, mysql, pct, run


def storm(n: int, port: int, user: str, password: str, db: str) -> tuple[list[float], list[str]]:
    barrier = threading.Barrier(n)
    times: list[float] = []
    errors: list[str] = []

    def client(_: int) -> None:
        barrier.wait()
        t = time.perf_counter()
        try:
            conn = mysql(port, user, password, db, connect_timeout=60, read_timeout=60)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            times.append((time.perf_counter() - t) * 1000)
            conn.close()
        except Exception as exc:
            errors.append(repr(exc))

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(client, range(n)))
    return times, errors


async def storm_elsewhere(n: int, *args: object) -> tuple[list[float], list[str]]:
    """Run the storm's clients in a process of their own, so they do not share a GIL with
    the proxy they measure."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client-only",
        str(n),
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    data = json.loads(out)
    return data["times"], data["errors"]


async def main(clients: int) -> None:
    # 2 CU: 2000 connection slots, so every client of the storm can hold one at once.
    async with bench_platform(autoscaling_limit_min_cu=2, autoscaling_limit_max_cu=2) as b:
        platform, ep = b.platform, b.endpoint_id
        args = (b.proxy_port, f"{ep}.{b.role}", b.password, b.database)
        await platform.lifecycle.start(ep)
        await platform.lifecycle.suspend(ep)
        before = platform.start_metrics.start_counts[ep]
        cold, cold_errors = await storm_elsewhere(clients, *args)
        starts = platform.start_metrics.start_counts[ep] - before
        warm, warm_errors = await storm_elsewhere(clients, *args)
        info = await platform.driver.inspect(ep)
        direct, direct_errors = await storm_elsewhere(clients, info.port, b.role, *args[2:])

    print(f"\n{clients} clients connecting at once, PyMySQL, 2 CU endpoint (ms to first row)\n")
    print(f"{'':<22}{'ok':>6}{'errors':>8}{'starts':>8}{'p50':>9}{'p99':>9}{'max':>9}")
    for name, times, errs, st in (
        ("suspended endpoint", cold, cold_errors, starts),
        ("active endpoint", warm, warm_errors, 0),
    ):
        print(
            f"{name:<22}{len(times):>6}{len(errs):>8}{st:>8}{pct(times, 50):>9.1f}"
            f"{pct(times, 99):>9.1f}{max(times):>9.1f}"
        )
    print(
        f"\nratio to direct (p50): suspended {pct(cold, 50) / pct(direct, 50):.2f}x, "
        f"active {pct(warm, 50) / pct(direct, 50):.2f}x"
    )
    for e in (cold_errors + warm_errors + direct_errors)[:5]:
        print("error:", e)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client-only":
        n, port, user, password, db = sys.argv[2:7]
        times, errors = storm(int(n), int(port), user, password, db)
        print(json.dumps({"times": times, "errors": errors}))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    run(main(parser.parse_args().clients))
