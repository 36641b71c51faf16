"""Resume latency: N cycles of (suspend → connect through the proxy → first `SELECT 1`
answered) with PyMySQL, against the same on an already active endpoint, with the time
broken down into client auth, wake (of which mariadbd start to ready) and backend login.
The baseline, in the same run: a bare mariadbd started by hand on a copy of the same
template datadir until it greets (no Selkie, no cgroup).

The platform runs its default configuration (cgroups on where writable, the startup boost
on); --no-boost and --no-cgroups measure a second column.

    .venv/bin/python bench/resume.py [--cycles 50] [--archive off] [--no-boost] [--no-cgroups]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import pymysql
from _common import add_config_flags, bare_cycle, bench_platform, config_env, describe, pct, run

from selkie.compute.local import LocalDriver
from selkie.storage.local import LocalStorage


def first_row(port: int, user: str, password: str, db: str) -> float:
    t = time.perf_counter()
    conn = pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        password=password,
        database=db,
        ssl_disabled=True,
        connect_timeout=30,
    )
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
    elapsed = (time.perf_counter() - t) * 1000
    conn.close()
    return elapsed


async def main(cycles: int, archive: str, config: dict[str, str]) -> None:
    # --archive off: without durable storage, to see what it adds to a resume.
    env = {"SELKIE_ARCHIVE_URL": "off"} if archive == "off" else {}
    env.update(config)
    bare: list[float] = []
    async with bench_platform(env=env) as b:
        platform, ep = b.platform, b.endpoint_id
        args = (b.proxy_port, f"{ep}.{b.role}", b.password, b.database)
        await asyncio.to_thread(first_row, *args)  # first start: creates the accounts
        cold: list[float] = []
        warm: list[float] = []
        parts: dict[str, list[float]] = {}
        for _ in range(cycles):
            await platform.lifecycle.suspend(ep)
            cold.append(await asyncio.to_thread(first_row, *args))
            timings = dict(platform.proxy.last_timings[ep])  # type: ignore[union-attr]
            timings["mariadbd_start_ms"] = platform.start_metrics.last_start_timings[ep][
                "mariadbd_start_ms"
            ]
            for k, v in timings.items():
                parts.setdefault(k, []).append(v)
            warm.append(await asyncio.to_thread(first_row, *args))
            assert isinstance(platform.storage, LocalStorage)
            assert isinstance(platform.driver, LocalDriver)
            started, _ = await bare_cycle(
                platform.storage.template, platform.settings.data_dir, platform.driver.mariadbd
            )
            bare.append(started)

    print(
        f"\nconnect → first row of SELECT 1 through the proxy, {cycles} cycles, PyMySQL, "
        f"0.25 CU, archive {archive}, {describe(env)} (ms)\n"
    )
    print(f"{'':<28}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    rows = (
        ("suspended endpoint (resume)", cold),
        ("active endpoint", warm),
        ("bare mariadbd start", bare),
    )
    for name, vals in rows:
        print(
            f"{name:<28}{pct(vals, 50):>8.1f}{pct(vals, 90):>8.1f}{pct(vals, 99):>8.1f}"
            f"{max(vals):>8.1f}"
        )
    print(
        f"{'resume / active (p50)':<28}{statistics.median(cold) / statistics.median(warm):>8.1f}x"
    )
    print(
        f"{'resume / bare start':<28}{pct(cold, 50) / pct(bare, 50):>8.2f}x (p50)"
        f"{pct(cold, 99) / pct(bare, 99):>8.2f}x (p99)"
    )
    print("\nbreakdown of a resume (p50 ms)\n")
    for name in ("client_auth_ms", "wake_ms", "mariadbd_start_ms", "backend_login_ms"):
        label = "  of which mariadbd start to ready" if name == "mariadbd_start_ms" else name
        print(f"{label:<36}{pct(parts[name], 50):>8.1f}{pct(parts[name], 99):>8.1f} (p99)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--archive", choices=["on", "off"], default="on")
    add_config_flags(parser)
    a = parser.parse_args()
    run(main(a.cycles, a.archive, config_env(a)))
