"""Autoscaling under a load that steps up: sysbench oltp_read_only through the proxy at 1, 2,
4 and 8 threads (--step seconds each) against an endpoint of min 0.25 / max 2 CU, and in the
same run against a fixed 0.25 CU and a fixed 2 CU endpoint. Prints qps per step, the seconds
the autoscaled endpoint took to reach the size it served the step at, the CU-seconds billed
to each, and how long the autoscaled one took to get back to its minimum once idle.

    .venv/bin/python bench/autoscale.py [--step 30] [--no-cgroups]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import add_config_flags, bench_platform, config_env, describe, run, sysbench

from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform

THREADS = (1, 2, 4, 8)
SIZES = {"autoscaled 0.25-2": (0.25, 2.0), "fixed 0.25": (0.25, 0.25), "fixed 2": (2.0, 2.0)}


@dataclass
class Result:
    qps: list[float] = field(default_factory=list)
    reached: list[float | None] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)
    billed: float = 0.0  # during the staircase
    billed_total: float = 0.0  # and until back at its minimum
    back_to_min: float | None = None


async def watch_size(
    platform: Platform, endpoint_id: str, trace: list[tuple[float, float]]
) -> None:
    """Record (seconds, current_cu) every 0.2 s until cancelled."""
    t0 = time.monotonic()
    while True:
        cu = platform.lifecycle.get(endpoint_id).current_cu or 0.0
        trace.append((time.monotonic() - t0, cu))
        await asyncio.sleep(0.2)


async def billed(platform: Platform, created: Created, start: datetime, end: datetime) -> float:
    """CU-seconds billed to the project between ``start`` and ``end``."""
    ((_, periods),) = await asyncio.to_thread(
        platform.control.consumption.history,
        local_principal(platform.control),
        start=start,
        end=end,
        granularity="daily",
        project_ids=[created.project.id],
    )
    return sum(p.compute_time_seconds for p in periods)


async def staircase(platform: Platform, created: Created, step: int) -> Result:
    ep, role = created.endpoints[0].id, created.roles[0]
    assert platform.proxy is not None
    conn: dict[str, Any] = {
        "port": platform.proxy.port,
        "user": f"{ep}.{role.name}",
        "password": role.password or "",
        "db": created.databases[0].name,
    }
    await platform.lifecycle.start(ep)
    _, _, err = await sysbench("oltp_read_only", threads=1, seconds=1, command="prepare", **conn)
    assert not err, err
    await platform.lifecycle.restart(ep)  # every endpoint starts the staircase at its minimum
    result = Result()
    began = datetime.now(UTC)
    for threads in THREADS:
        trace: list[tuple[float, float]] = []
        watcher = asyncio.create_task(watch_size(platform, ep, trace))
        qps, _, err = await sysbench("oltp_read_only", threads=threads, seconds=step, **conn)
        watcher.cancel()
        assert not err, err
        final = trace[-1][1]
        result.qps.append(qps)
        result.sizes.append(final)
        result.reached.append(next((t for t, cu in trace if cu == final), None))
    ended = datetime.now(UTC)
    t = time.monotonic()
    minimum = platform.lifecycle.get(ep).autoscaling_limit_min_cu
    while platform.lifecycle.get(ep).current_cu != minimum and time.monotonic() - t < 300:
        await asyncio.sleep(0.5)
    result.back_to_min = time.monotonic() - t
    await platform.lifecycle.suspend(ep)
    result.billed = await billed(platform, created, began, ended)
    result.billed_total = await billed(
        platform, created, began, datetime.now(UTC) + timedelta(seconds=1)
    )
    return result


async def main(step: int, config: dict[str, str]) -> None:
    results: dict[str, Result] = {}
    async with bench_platform(env=config) as b:
        who = local_principal(b.platform.control)
        for name, (lo, hi) in SIZES.items():
            created = await asyncio.to_thread(
                b.platform.control.projects.create,
                who,
                name=name.replace(" ", "-").replace(".", ""),
                default_endpoint_settings={
                    "autoscaling_limit_min_cu": lo,
                    "autoscaling_limit_max_cu": hi,
                    "suspend_timeout_seconds": 3600,
                },
            )
            results[name] = await staircase(b.platform, created, step)

    print(f"\nsysbench oltp_read_only through the proxy, {step} s per step, {describe(config)}\n")
    print(f"{'threads':<10}" + "".join(f"{name + ' qps':>26}" for name in results))
    for i, threads in enumerate(THREADS):
        print(f"{threads:<10}" + "".join(f"{r.qps[i]:>26.0f}" for r in results.values()))
    auto = results["autoscaled 0.25-2"]
    fixed_max = results["fixed 2"]
    print("\nautoscaled endpoint per step: size at the end, seconds until it got there, qps ratio")
    for i, threads in enumerate(THREADS):
        reached = auto.reached[i]
        print(
            f"{threads:<10}{auto.sizes[i]:>6} CU{reached if reached is not None else -1:>8.1f} s"
            f"{auto.qps[i] / fixed_max.qps[i]:>8.2f}x of fixed 2 CU"
        )
    print(f"\nback at its minimum after the load: {auto.back_to_min:.1f} s")
    print("\nCU-seconds billed: the staircase, and until back at the minimum")
    for name, r in results.items():
        print(f"{name:<22}{r.billed:>10.1f}{r.billed_total:>10.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", type=int, default=30)
    add_config_flags(parser)
    args = parser.parse_args()
    run(main(args.step, config_env(args)))
