"""Lifecycle latencies: create-project, start, suspend and restart of real mariadbd computes,
over N cycles, against a baseline measured in the same run: a bare mariadbd started and
stopped by hand from the same kind of datadir (no Selkie).

    .venv/bin/python bench/lifecycle.py [--cycles 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from _common import add_config_flags, bare_cycle, config_env, describe, pct, run

from selkie.compute.local import LocalDriver
from selkie.config import load_settings
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform
from selkie.storage.local import LocalStorage


async def main(cycles: int, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="selkie-bench-") as tmp:
        # The default configuration: CPU and memory limits on where cgroups are writable,
        # the startup boost on (flags turn either off, for a second column).
        settings = load_settings(environ={"SELKIE_DATA_DIR": tmp, **env})
        platform = Platform.open(settings)
        await platform.start()
        await platform.runner.stop()  # drive the lifecycle directly, without the queue
        who = local_principal(platform.control)
        breakdown: dict[str, list[float]] = {}
        resume_breakdown: dict[str, list[float]] = {}
        samples: dict[str, list[float]] = {
            k: []
            for k in (
                "create_project",
                "start",
                "suspend",
                "resume",
                "restart",
                "bare_start",
                "bare_stop",
            )
        }
        try:
            for i in range(cycles):
                t = time.perf_counter()
                created = await asyncio.to_thread(
                    platform.control.projects.create, who, name=f"bench{i}"
                )
                await platform.lifecycle.ensure_branch_data(
                    *platform.runner.branch_and_project(created.branch.id) or ()
                )
                samples["create_project"].append((time.perf_counter() - t) * 1000)
                ep = created.endpoints[0].id
                t = time.perf_counter()
                await platform.lifecycle.start(ep)
                samples["start"].append((time.perf_counter() - t) * 1000)
                for key, value in platform.start_metrics.last_start_timings[ep].items():
                    breakdown.setdefault(key, []).append(value)
                t = time.perf_counter()
                await platform.lifecycle.suspend(ep)
                samples["suspend"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await platform.lifecycle.start(ep)
                samples["resume"].append((time.perf_counter() - t) * 1000)
                for key, value in platform.start_metrics.last_start_timings[ep].items():
                    resume_breakdown.setdefault(key, []).append(value)
                t = time.perf_counter()
                await platform.lifecycle.restart(ep)
                samples["restart"].append((time.perf_counter() - t) * 1000)
                await platform.lifecycle.suspend(ep)
                assert isinstance(platform.storage, LocalStorage)
                assert isinstance(platform.driver, LocalDriver)
                bs, bt = await bare_cycle(
                    platform.storage.template, Path(tmp), platform.driver.mariadbd
                )
                samples["bare_start"].append(bs)
                samples["bare_stop"].append(bt)
        finally:
            await platform.stop()
            platform.close()

    base = {
        "start": "bare_start",
        "resume": "bare_start",
        "restart": "bare_start",
        "suspend": "bare_stop",
    }
    print(
        f"\nlifecycle over {cycles} cycles (ms; 0.25 CU; {describe(env)}; "
        "bare = mariadbd by hand, same run)\n"
    )
    print(f"{'operation':<16}{'p50':>9}{'p95':>9}{'max':>9}   {'baseline p50':>13}{'ratio':>8}")
    for name in (
        "create_project",
        "start",
        "suspend",
        "resume",
        "restart",
        "bare_start",
        "bare_stop",
    ):
        vals = samples[name]
        b = base.get(name)
        ratio = ""
        bp50 = ""
        if b:
            bp = statistics.median(samples[b])
            bp50 = f"{bp:.1f}"
            ratio = f"{statistics.median(vals) / bp:.2f}x"
        print(
            f"{name:<16}{pct(vals, 50):>9.1f}{pct(vals, 95):>9.1f}{max(vals):>9.1f}   "
            f"{bp50:>13}{ratio:>8}"
        )

    print("\nwhere the time goes, p50 ms (first start: accounts created; resume: unchanged)\n")
    print(f"{'':<20}{'start':>9}{'resume':>9}")
    for name, vals in breakdown.items():
        print(f"{name:<20}{pct(vals, 50):>9.1f}{pct(resume_breakdown[name], 50):>9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    add_config_flags(parser)
    args = parser.parse_args()
    run(main(args.cycles, config_env(args)))
