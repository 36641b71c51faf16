"""Durable storage, measured in one run of the default configuration (cgroups on, default
endpoint size, the local archive):

1. the cost of durability: sysbench oltp_write_only straight to the compute with the
   archive off, durability=async and durability=sync, interleaved rounds, at the default
   endpoint size (0.25 CU) and at 1 CU; and how long
   commits take to reach the archive under that load (per transaction, p50/p99);
2. base images of a ~1 GB branch: the first, and after a 1 % change (time and bytes
   uploaded), against a plain copy of the datadir;
3. point-in-time restore against the log replayed (~100 MB and ~1 GB);
4. disaster recovery: the first wake of the 1 GB branch whose datadir is gone, against an
   ordinary resume of it.

    make bench-deps                      # sysbench from Debian
    .venv/bin/python bench/archive.py [--time 10] [--rounds 2] [--gib 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import Bench, bench_platform, pct, run, sysbench

from selkie.archive.layout import TimelineRef, project_prefix
from selkie.control.bootstrap import local_principal
from selkie.control.history import History
from selkie.platform import Platform
from selkie.safekeeper.service import Safekeeper
from selkie.storage.images import Manifest, list_images, read_manifest

ROW_BYTES = 1000
ROWS_PER_TXN = 1000  # ~1 MB transactions


async def sql(platform: Platform, endpoint_id: str, *statements: str) -> list[Any]:
    return await platform.driver.execute(endpoint_id, list(statements))


def in_process(history: History) -> Safekeeper:
    """The embedded safekeeper (the benchmark reads its archive delays)."""
    assert isinstance(history.safekeeper, Safekeeper)
    return history.safekeeper


async def archive_bytes(platform: Platform, project_id: str) -> int:
    assert platform.history is not None
    return sum(o.size for o in await platform.history.archive.list(project_prefix(project_id)))


async def caught_up(b: Bench) -> None:
    """Until the archive holds everything the endpoint's compute has committed."""
    history = b.platform.history
    assert history is not None
    ((row,),) = (await sql(b.platform, b.endpoint_id, "SELECT @@gtid_binlog_pos"))[0]
    want = int(str(row).rsplit("-", 1)[1]) if row else 0
    for st in history.safekeeper.status():
        if st.endpoint_id == b.endpoint_id:
            ref = TimelineRef(st.project_id, st.timeline_id)
            await history.safekeeper.wait_archived(ref, want, 120)


async def write_cost(seconds: int, rounds: int, threads: int, cu: float) -> None:
    modes = {"off": {"SELKIE_ARCHIVE_URL": "off"}, "async": {}, "sync": {}}
    # Also the async endpoint with its safekeeper detached (the binary log alone), to tell
    # the log's cost from the safekeeper's.
    columns = ["off", "binlog only", "async", "sync"]
    # A fourth column: the async endpoint with its safekeeper detached (the binary log
    # alone), to tell the log's cost from the safekeeper's.
    columns = ["off", "binlog only", "async", "sync"]
    size: dict[str, Any] = {"autoscaling_limit_min_cu": cu, "autoscaling_limit_max_cu": cu}
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in columns}
    delays: list[float] = []
    async with (
        bench_platform(env=modes["off"], suspend_timeout_seconds=-1, **size) as off,
        bench_platform(suspend_timeout_seconds=-1, **size) as asy,
        bench_platform(suspend_timeout_seconds=-1, **size) as syn,
    ):
        benches = {"off": off, "async": asy, "sync": syn}
        await asyncio.to_thread(
            syn.platform.control.projects.update,
            local_principal(syn.platform.control),
            syn.created.project.id,
            settings={"durability": "sync"},
        )
        ports = {}
        for name, b in benches.items():
            await b.platform.lifecycle.start(b.endpoint_id)
            info = await b.platform.driver.inspect(b.endpoint_id)
            assert info.port is not None
            ports[name] = info.port
            await sysbench(
                "oltp_write_only",
                port=info.port,
                user=b.role,
                password=b.password,
                db=b.database,
                threads=threads,
                seconds=1,
                command="prepare",
            )
        for _ in range(rounds):
            for name in columns:
                b = benches["async" if name == "binlog only" else name]
                hist = b.platform.history
                if hist is not None:
                    if name == "binlog only":
                        await hist.safekeeper.detach(b.endpoint_id)
                    elif name == "async":
                        info = await b.platform.driver.inspect(b.endpoint_id)
                        await hist.following.attach(
                            b.endpoint_id, b.created.branch.id, b.created.project, info
                        )
                        await caught_up(b)  # the log written meanwhile, before measuring
                    in_process(hist).archive_delays.clear()
                qps, p95, err = await sysbench(
                    "oltp_write_only",
                    port=ports["async" if name == "binlog only" else name],
                    user=b.role,
                    password=b.password,
                    db=b.database,
                    threads=threads,
                    seconds=seconds,
                )
                if err:
                    raise SystemExit(f"sysbench ({name}) failed:\n{err}")
                results[name].append((qps, p95))
                if name == "async" and hist is not None:
                    await asyncio.sleep(1.0)  # what is in flight lands
                    delays.extend(in_process(hist).archive_delays)
    print(
        f"\n1. oltp_write_only, {threads} threads, {seconds}s x {rounds} interleaved rounds, "
        f"{cu} CU endpoint, straight to the compute"
    )
    print(f"{'archive':<14}{'qps':>10}{'p95 ms':>10}{'qps/off':>10}")
    base = statistics.median(q for q, _ in results["off"])
    for name, rows in results.items():
        q = statistics.median(r[0] for r in rows)
        p = statistics.median(r[1] for r in rows)
        print(f"{name:<14}{q:>10.0f}{p:>10.1f}{q / base:>10.2f}")
    if delays:
        print(
            f"async: commit -> archive per transaction, {len(delays)} transactions: "
            f"p50 {pct(delays, 50) * 1000:.0f} ms, p99 {pct(delays, 99) * 1000:.0f} ms, "
            f"max {max(delays) * 1000:.0f} ms"
        )


async def load(b: Bench, gib: float) -> list[tuple[int, datetime]]:
    """~``gib`` GiB of incompressible rows in ~1 MB transactions; (rows, time) marks."""
    p, ep = b.platform, b.endpoint_id
    await sql(
        p,
        ep,
        f"CREATE TABLE {b.database}.big (id INT AUTO_INCREMENT PRIMARY KEY, pad VARBINARY(1000))",
    )
    txns = int(gib * 2**30 / (ROW_BYTES * ROWS_PER_TXN))
    marks = []
    for i in range(txns):
        await sql(
            p,
            ep,
            f"INSERT INTO {b.database}.big (pad) "
            f"SELECT RANDOM_BYTES({ROW_BYTES}) FROM {b.database}.seq_1_to_{ROWS_PER_TXN}",
        )
        if i + 1 in (txns // 10, txns):
            marks.append(((i + 1) * ROWS_PER_TXN, datetime.now(UTC)))
    return marks


async def newest_image(b: Bench) -> Manifest:
    history = b.platform.history
    assert history is not None
    (st,) = [s for s in history.safekeeper.status() if s.project_id == b.created.project.id]
    images = await list_images(history.archive, TimelineRef(st.project_id, st.timeline_id))
    return await read_manifest(history.archive, images[-1].key)


async def branch_at(b: Bench, when: datetime) -> float:
    p = b.platform
    who = local_principal(p.control)
    t0 = time.perf_counter()
    created = await asyncio.to_thread(
        p.control.branches.create, who, b.created.project.id, parent_timestamp=when
    )
    await p.runner.wait_idle(timeout=3600)
    op = await asyncio.to_thread(
        p.control.operations.get, who, b.created.project.id, created.operations[0].id
    )
    assert op.error is None, op.error
    return time.perf_counter() - t0


async def big_branch(gib: float) -> None:
    async with bench_platform(
        proxy=False,
        suspend_timeout_seconds=-1,
        autoscaling_limit_min_cu=2,
        autoscaling_limit_max_cu=2,
    ) as b:
        p, ep, pid = b.platform, b.endpoint_id, b.created.project.id
        assert p.history is not None
        await p.lifecycle.start(ep)
        t0 = time.perf_counter()
        marks = await load(b, gib)
        loaded = time.perf_counter() - t0
        datadir = p.history.datadirs.datadir(b.created.branch.id)
        # The log is archived before the images are measured.
        await asyncio.sleep(2)
        results = {}
        rows = marks[-1][0]
        changes = {
            "first": None,
            # 1 % of the rows, side by side (a batch update of the newest rows).
            "1 % of rows, together": f"1 ORDER BY id DESC LIMIT {rows // 100}",
            # 1 MB of rows (1 in 1000), scattered over the whole table: every 256 KiB
            # chunk of it holds a changed page.
            "1 MB of rows, scattered": f"1 ORDER BY RAND() LIMIT {rows // 1000}",
        }
        for label, where in changes.items():
            if where is not None:
                await p.lifecycle.start(ep)
                await sql(
                    p,
                    ep,
                    f"UPDATE {b.database}.big SET pad = RANDOM_BYTES({ROW_BYTES}) WHERE {where}",
                )
            before = await archive_bytes(p, pid)
            await p.lifecycle.suspend(ep)
            t1 = time.perf_counter()
            await p.history.wait_images()
            took = time.perf_counter() - t1
            newest = await newest_image(b)
            kind = "delta" if newest.parent else "full"
            results[label] = (took, await archive_bytes(p, pid) - before, kind)
        size = sum(f.stat().st_size for f in datadir.rglob("*") if f.is_file())
        with tempfile.TemporaryDirectory(dir=p.settings.data_dir) as tmp:
            t2 = time.perf_counter()
            await asyncio.to_thread(shutil.copytree, datadir, Path(tmp) / "copy")
            copy = time.perf_counter() - t2
        print(
            f"\n2. base images of a {size / 2**30:.2f} GiB datadir "
            f"(loaded in {loaded:.0f} s, {marks[-1][0]} rows of {ROW_BYTES} random bytes)"
        )
        print(f"{'image':<26}{'kind':>7}{'seconds':>10}{'uploaded MiB':>15}")
        for label, (took, uploaded, kind) in results.items():
            print(f"{label:<26}{kind:>7}{took:>10.2f}{uploaded / 2**20:>15.1f}")
        print(f"{'baseline: cp -r':<26}{'':>7}{copy:>10.2f}{size / 2**20:>15.1f}")
        print("(uploaded: everything the archive gained, the log of the change included)")

        print("\n3. point-in-time restore (branch at a time: newest image before it + replay)")
        print(f"{'log replayed':<22}{'seconds':>10}")
        for rows, when in marks:
            took = await branch_at(b, when)
            print(f"{f'~{rows * ROW_BYTES / 2**20:.0f} MiB':<22}{took:>10.2f}")

        # 4. An ordinary resume, then the datadir lost: the first wake rebuilds it.
        resumes = []
        for _ in range(3):
            t3 = time.perf_counter()
            await p.lifecycle.start(ep)
            resumes.append(time.perf_counter() - t3)
            await p.lifecycle.suspend(ep)
        await p.history.wait_images()
        await asyncio.to_thread(shutil.rmtree, datadir)
        t4 = time.perf_counter()
        await p.lifecycle.start(ep)
        dr = time.perf_counter() - t4
        ((count,),) = (await sql(p, ep, f"SELECT COUNT(*) FROM {b.database}.big"))[0]
        assert int(count) == marks[-1][0], count
        print("\n4. disaster recovery: first wake with the datadir gone")
        print(f"{'wake':<22}{'seconds':>10}")
        print(f"{'datadir lost':<22}{dr:>10.2f}")
        print(f"{'baseline: resume':<22}{statistics.median(resumes):>10.2f}")


async def main(
    seconds: int, rounds: int, threads: int, gib: float, parts: str, cus: list[float]
) -> None:
    if not shutil.which("sysbench"):
        raise SystemExit("sysbench is missing: run `make bench-deps`")
    print(f"{os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    if "1" in parts:
        for cu in cus:
            await write_cost(seconds, rounds, threads, cu)
    if "2" in parts:
        await big_branch(gib)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--parts", default="12", help="1: write cost, 2: the 1 GB branch")
    parser.add_argument(
        "--cu", type=float, action="append", help="endpoint sizes for part 1 (default 0.25, 1)"
    )
    a = parser.parse_args()
    sys.exit(run(main(a.time, a.rounds, a.threads, a.gib, a.parts, a.cu or [0.25, 1.0])))
