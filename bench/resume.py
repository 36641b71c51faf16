"""Resume latency: N cycles of (suspend → connect through the proxy → first `SELECT 1`
answered) with PyMySQL, from a warm suspend (frozen compute) and from a cold one (stopped),
against the same on an already active endpoint, with the time broken down into client auth,
wake (of which mariadbd start to ready, or the thaw) and backend login. The baseline, in
the same run: a bare mariadbd started by hand on a copy of the same template datadir until
it greets (no Selkie, no cgroup). Then the memory of warm computes: --warm-computes
endpoints each load and read a table (--table-mb), are frozen, and their cgroup's resident
memory is read before and after; how many fit in 8 GiB follows.

The platform runs its default configuration (cgroups on where writable, the startup boost
on); --no-boost and --no-cgroups measure a second column.

    .venv/bin/python bench/resume.py [--cycles 50] [--archive off] [--no-boost] [--no-cgroups]
        [--warm-computes 8] [--table-mb 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _common import (
    Bench,
    add_config_flags,
    bare_cycle,
    bench_platform,
    config_env,
    describe,
    mysql,
    pct,
    run,
)

from selkie.compute.local import LocalDriver
from selkie.control.bootstrap import local_principal
from selkie.storage.local import LocalStorage


def first_row(port: int, user: str, password: str, db: str) -> float:
    t = time.perf_counter()
    conn = mysql(port, user, password, db, connect_timeout=30)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
    elapsed = (time.perf_counter() - t) * 1000
    conn.close()
    return elapsed


def load_table(port: int, user: str, password: str, db: str, mb: int) -> None:
    """A table of about ``mb`` MiB, read once: its pages fill the buffer pool."""
    conn = mysql(port, user, password, db, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS pad (id INT PRIMARY KEY, v VARCHAR(1000))")
        rows = mb * 1024
        for start in range(0, rows, 2000):
            values = ",".join(f"({i}, REPEAT('x', 1000))" for i in range(start, start + 2000))
            cur.execute(f"INSERT INTO pad VALUES {values}")
        cur.execute("SELECT COUNT(*), SUM(LENGTH(v)) FROM pad")
        cur.fetchone()
    conn.close()


async def warm_memory(b: Bench, count: int, table_mb: int) -> tuple[list[int], list[int]]:
    """Resident memory (cgroup rss) of ``count`` computes loaded with a table, active and
    then frozen (warm suspended)."""
    platform = b.platform
    who = local_principal(platform.control)
    before, after = [], []
    for i in range(count):
        created = await asyncio.to_thread(platform.control.projects.create, who, name=f"w{i}")
        await platform.runner.wait_idle()
        ep = created.endpoints[0].id
        role = created.roles[0]
        await asyncio.to_thread(
            load_table,
            b.proxy_port,
            f"{ep}.{role.name}",
            role.password or "",
            created.databases[0].name,
            table_mb,
        )
        before.append(platform.driver.memory(ep) or 0)
        await platform.lifecycle.suspend(ep, warm=True)
        assert platform.driver.is_frozen(ep), "warm suspend is off here (no freezer?)"
        after.append(platform.driver.memory(ep) or 0)
    return before, after


async def main(
    cycles: int, archive: str, config: dict[str, str], warm_computes: int, table_mb: int
) -> None:
    # --archive off: without durable storage, to see what it adds to a resume.
    env = {"SELKIE_ARCHIVE_URL": "off"} if archive == "off" else {}
    env.update(config)
    bare: list[float] = []
    async with bench_platform(env=env) as b:
        platform, ep = b.platform, b.endpoint_id
        args = (b.proxy_port, f"{ep}.{b.role}", b.password, b.database)
        await asyncio.to_thread(first_row, *args)  # first start: creates the accounts
        cold: list[float] = []
        thawed: list[float] = []
        warm: list[float] = []
        parts: dict[str, list[float]] = {}
        warm_parts: dict[str, list[float]] = {}
        for _ in range(cycles):
            await platform.lifecycle.suspend(ep, warm=True)
            assert platform.driver.is_frozen(ep), "warm suspend is off here (no freezer?)"
            thawed.append(await asyncio.to_thread(first_row, *args))
            timings = dict(platform.proxy.last_timings[ep])  # type: ignore[union-attr]
            timings["thaw_ms"] = platform.start_metrics.last_start_timings[ep]["thaw_ms"]
            for k, v in timings.items():
                warm_parts.setdefault(k, []).append(v)
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
        rss_active, rss_warm = await warm_memory(b, warm_computes, table_mb)

    print(
        f"\nconnect → first row of SELECT 1 through the proxy, {cycles} cycles, PyMySQL, "
        f"0.25 CU, archive {archive}, {describe(env)} (ms)\n"
    )
    print(f"{'':<28}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    rows = (
        ("warm suspended (thaw)", thawed),
        ("cold suspended (start)", cold),
        ("active endpoint", warm),
        ("bare mariadbd start", bare),
    )
    for name, vals in rows:
        print(
            f"{name:<28}{pct(vals, 50):>8.1f}{pct(vals, 90):>8.1f}{pct(vals, 99):>8.1f}"
            f"{max(vals):>8.1f}"
        )
    print(
        f"{'cold resume / active (p50)':<28}"
        f"{statistics.median(cold) / statistics.median(warm):>8.1f}x"
    )
    print(
        f"{'warm resume / active (p50)':<28}"
        f"{statistics.median(thawed) / statistics.median(warm):>8.1f}x"
    )
    print(
        f"{'resume / bare start':<28}{pct(cold, 50) / pct(bare, 50):>8.2f}x (p50)"
        f"{pct(cold, 99) / pct(bare, 99):>8.2f}x (p99)"
    )
    print("\nbreakdown of a cold resume (p50 ms)\n")
    for name in ("client_auth_ms", "wake_ms", "mariadbd_start_ms", "backend_login_ms"):
        label = "  of which mariadbd start to ready" if name == "mariadbd_start_ms" else name
        print(f"{label:<36}{pct(parts[name], 50):>8.1f}{pct(parts[name], 99):>8.1f} (p99)")
    print("\nbreakdown of a warm resume (p50 ms)\n")
    for name in ("client_auth_ms", "wake_ms", "thaw_ms", "backend_login_ms"):
        label = "  of which the thaw" if name == "thaw_ms" else name
        vals = warm_parts[name]
        print(f"{label:<36}{pct(vals, 50):>8.2f}{pct(vals, 99):>8.2f} (p99)")
    if not rss_warm:
        return  # --warm-computes 0: no memory figures
    mib = 2**20
    print(
        f"\nresident memory (cgroup rss) of {len(rss_warm)} computes, each after reading a "
        f"{table_mb} MiB table (MiB)\n"
    )
    print(f"{'':<28}{'p50':>8}{'min':>8}{'max':>8}")
    for name, held in (("active", rss_active), ("warm (frozen)", rss_warm)):
        mibs = [v / mib for v in held]
        print(f"{name:<28}{statistics.median(mibs):>8.1f}{min(mibs):>8.1f}{max(mibs):>8.1f}")
    per = statistics.median(rss_warm)
    print(f"{'warm computes in 8 GiB':<28}{int(8 * 2**30 // per):>8d} (at the p50)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--archive", choices=["on", "off"], default="on")
    parser.add_argument("--warm-computes", type=int, default=8)
    parser.add_argument("--table-mb", type=int, default=32)
    add_config_flags(parser)
    a = parser.parse_args()
    run(main(a.cycles, a.archive, config_env(a), a.warm_computes, a.table_mb))
