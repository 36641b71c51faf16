"""Log replay speed: a point-in-time restore of one log, through the private replica's
applier (what Selkie does), against the text pipeline it replaced (``mariadb-binlog |
mariadb`` into a private server with a compute's settings), same log, same run.

Two logs: bulk transactions (1,000 rows of ~1 KB each, ~1 MB a transaction) and small
OLTP transactions (sysbench oltp_write_only, when sysbench is installed). Each restore
starts from the timeline's initial image, so the whole log is replayed; figures are MiB of
binary log per second, the median of the rounds, with /proc/loadavg beside them.

    make bench-deps                      # sysbench from Debian
    .venv/bin/python bench/replay.py [--mib 256] [--oltp-seconds 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pymysql
from _common import Bench, bench_platform, loadavg, run, sysbench

from selkie.archive import segments
from selkie.archive.binlog import binlog_file
from selkie.archive.layout import TimelineRef
from selkie.compute.mariadb import Sizing, durability_options, render_config
from selkie.compute.procs import find_mariadbd, wait_for_handshake
from selkie.storage.deltas import materialize_image
from selkie.storage.images import list_images
from selkie.storage.restore import Target, pick_image, restore, wal_chain

ROW_BYTES = 1000
ROWS_PER_TXN = 1000


async def load_bulk(b: Bench, mib: int) -> None:
    sql = b.platform.driver.execute
    db = b.database
    await sql(
        b.endpoint_id, [f"CREATE TABLE {db}.big (id INT AUTO_INCREMENT PRIMARY KEY, pad BLOB)"]
    )
    rows = f"SELECT RANDOM_BYTES({ROW_BYTES}) FROM {db}.seq_1_to_{ROWS_PER_TXN}"
    insert = f"INSERT INTO {db}.big (pad) {rows}"
    for _ in range(mib * 2**20 // (ROW_BYTES * ROWS_PER_TXN)):
        await sql(b.endpoint_id, [insert])


async def load_oltp(b: Bench, seconds: int) -> None:
    info = await b.platform.driver.inspect(b.endpoint_id)
    assert info.port is not None
    for command, run_for in (("prepare", 0), ("run", seconds)):
        await sysbench(
            "oltp_write_only",
            port=info.port,
            user=b.role,
            password=b.password,
            db=b.database,
            threads=8,
            seconds=run_for,
            command=command,
        )


async def timeline_log(b: Bench) -> tuple[TimelineRef, bytes, list[bytes], int]:
    """The timeline, its format description, every transaction's events, the log bytes."""
    history = b.platform.history
    assert history is not None
    row = history.current_timeline(b.created.branch.id)
    assert row is not None
    ref = TimelineRef(row.project_id, row.id)
    fde, txns = b"", list[bytes]()
    for key in await wal_chain(history.archive, ref, 0):
        seg_fde, records, _ = segments.decode(segments.decompress(await history.archive.get(key)))
        fde = fde or seg_fde
        txns.extend(r.events for r in records)
    return ref, fde, txns, sum(len(t) for t in txns)


async def text_pipeline(
    b: Bench, ref: TimelineRef, target: Target, fde: bytes, txns: list[bytes]
) -> float:
    """The replaced path: the image, a private server with a compute's settings (sync at
    commit), and ``mariadb-binlog FILE | mariadb --binary-mode`` as its root."""
    history = b.platform.history
    assert history is not None
    with tempfile.TemporaryDirectory(dir=history.datadirs.root) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        image = pick_image(await list_images(history.archive, ref), target)
        assert image is not None  # a root timeline: an image or an error
        await materialize_image(history.archive, image.key, work / "data")
        sock = work / "s.sock"
        (work / "my.cnf").write_text(
            render_config(
                sizing=Sizing.for_cu(0.25),
                datadir=work / "data",
                socket=sock,
                port=0,
                pid_file=work / "pid",
                error_log=work / "err",
                run_as_root=os.geteuid() == 0,
                extra={
                    **durability_options(semi_sync=False, sync_timeout_ms=1000),
                    "skip_networking": "ON",
                    "innodb_buffer_pool_load_at_startup": "OFF",
                    "innodb_buffer_pool_dump_at_shutdown": "OFF",
                },
            )
        )
        proc = await asyncio.create_subprocess_exec(
            find_mariadbd(), f"--defaults-file={work / 'my.cnf'}", start_new_session=True
        )
        try:
            while not (sock.exists() and await wait_for_handshake(sock)):
                await asyncio.sleep(0.01)
            conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
            with conn.cursor() as cur:
                cur.execute("RESET MASTER")
                if image.seq:
                    cur.execute(f"SET GLOBAL gtid_binlog_state = '0-1-{image.seq}'")
            conn.close()
            binlog = work / "replay.bin"
            binlog.write_bytes(binlog_file(fde, txns))  # the initial image: all of it
            shell = (
                f"mariadb-binlog --no-defaults {binlog} | mariadb --no-defaults "
                f"--socket={sock} --user=root --binary-mode --max-allowed-packet=1G"
            )
            pipe = await asyncio.create_subprocess_shell(shell)
            assert await pipe.wait() == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        return time.perf_counter() - t0


async def applier(b: Bench, ref: TimelineRef, target: Target, threads: int) -> float:
    history = b.platform.history
    assert history is not None
    staging = history.datadirs.staging_dir(b.created.branch.id)
    try:
        t0 = time.perf_counter()
        await restore(
            history.archive,
            ref,
            target,
            staging,
            tools=replace(history.tools, parallel_threads=threads),
        )
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(staging, ignore_errors=True)


async def measure(label: str, loader: str, amount: int, rounds: int, threads: list[int]) -> None:
    async with bench_platform(
        proxy=False, autoscaling_limit_min_cu=1, autoscaling_limit_max_cu=1
    ) as b:
        p = b.platform
        assert p.history is not None
        await p.lifecycle.start(b.endpoint_id)
        if loader == "bulk":
            await load_bulk(b, amount)
        else:
            await load_oltp(b, amount)
        # Everything in the archive, and a time after the last transaction but before the
        # suspend's image: the restore starts from the initial image.
        await asyncio.sleep(1.0)
        target = Target(until_us=time.time_ns() // 1000)
        await asyncio.sleep(0.2)
        await p.lifecycle.suspend(b.endpoint_id)
        await p.history.wait_images()
        ref, fde, txns, size = await timeline_log(b)
        mib = size / 2**20
        print(f"\n{label}: {len(txns):,} transactions, {mib:.1f} MiB of binary log")
        print(f"{'path':<44}{'seconds':>9}{'MiB/s':>9}{'x text':>8}   loadavg")
        figures: dict[str, list[tuple[float, str]]] = {}
        for _ in range(rounds):
            load = loadavg()
            figures.setdefault("text: mariadb-binlog | mariadb (replaced)", []).append(
                (await text_pipeline(b, ref, target, fde, txns), load)
            )
            for n in threads:
                load = loadavg()
                name = f"applier, {n} parallel threads" if n else "applier, one SQL thread"
                figures.setdefault(name, []).append((await applier(b, ref, target, n), load))
        base = statistics.median(s for s, _ in figures["text: mariadb-binlog | mariadb (replaced)"])
        for name, runs in figures.items():
            seconds = statistics.median(s for s, _ in runs)
            loads = ", ".join(sorted({ld for _, ld in runs}))
            print(f"{name:<44}{seconds:>9.2f}{mib / seconds:>9.1f}{base / seconds:>8.2f}   {loads}")


async def main(args: argparse.Namespace) -> None:
    print(f"{os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, loadavg {loadavg()}")
    threads = [int(t) for t in args.threads.split(",")]
    await measure("bulk transactions (~1 MB each)", "bulk", args.mib, args.rounds, threads)
    if shutil.which("sysbench") and args.oltp_seconds:
        await measure(
            "small transactions (sysbench oltp_write_only, 8 threads)",
            "oltp",
            args.oltp_seconds,
            args.rounds,
            threads,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--oltp-seconds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", default="0,4,8")
    run(main(parser.parse_args()))
