"""Read-only computes (issue 28): how far behind the primary one is under a write load,
whether it converges, and how fast it wakes.

1. **Lag.** ``sysbench oltp_write_only`` on the primary (through the proxy, --threads,
   --seconds) while a heartbeat writer on the primary stamps a row with the time every
   50 ms and a reader on the read-only compute reads it back every 20 ms: the lag is the
   reader's clock minus the stamp it sees (p50, p99, max), with /proc/loadavg.
2. **Convergence.** After the writes stop: the time until the read-only compute has applied
   the primary's last transaction, then ``CHECKSUM TABLE`` of every table on both.
3. **Cold wake.** --cycles times: the read-only endpoint suspended cold, a client through
   the proxy until its first ``SELECT 1`` (the start: its own datadir, mariadbd, the
   catch-up); beside it in the same run, a bare ``mariadbd`` started by hand on a copy of
   the same datadir until it greets. Ratio of the medians.

The platform runs its default configuration.

    .venv/bin/python bench/read_only.py [--threads 2] [--seconds 30] [--cycles 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import bare_cycle, bench_platform, loadavg, mysql, pct, run, sysbench

from selkie.compute.local import find_mariadbd
from selkie.control.bootstrap import local_principal


async def main(threads: int, seconds: int, cycles: int) -> None:
    async with bench_platform() as b:
        p, history = b.platform, b.platform.history
        assert history is not None
        who = local_principal(p.control)
        pid, branch = b.created.project.id, b.created.branch.id
        port, user, pw, db = b.proxy_port, b.role, b.password, b.database
        _, _, err = await sysbench(
            "oltp_write_only",
            port=port,
            user=f"{b.endpoint_id}.{user}",
            password=pw,
            db=db,
            threads=1,
            seconds=1,
            command="prepare",
        )
        assert not err, err
        # Blocking clients run in threads: the proxy they reach runs on this event loop.
        primary = await asyncio.to_thread(
            mysql, port, f"{b.endpoint_id}.{user}", pw, db, autocommit=True
        )

        def heartbeat_table() -> None:
            with primary.cursor() as cur:
                cur.execute("CREATE TABLE hb (id INT PRIMARY KEY, ts DOUBLE)")
                cur.execute("INSERT INTO hb VALUES (1, 0)")

        await asyncio.to_thread(heartbeat_table)
        ro, _ = await asyncio.to_thread(
            p.control.endpoints.create, who, pid, branch_id=branch, type="read_only"
        )
        await p.lifecycle.start(ro.id)
        replica = await asyncio.to_thread(mysql, port, f"{ro.id}.{user}", pw, db, autocommit=True)

        # 1. Lag under oltp_write_only.
        stop = threading.Event()
        lags: list[float] = []

        def heartbeat() -> None:
            conn = mysql(port, f"{b.endpoint_id}.{user}", pw, db, autocommit=True)
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("UPDATE hb SET ts = %s WHERE id = 1", (time.time(),))
                    time.sleep(0.05)
            conn.close()

        def reader() -> None:
            with replica.cursor() as cur:
                while not stop.is_set():
                    cur.execute("SELECT ts FROM hb WHERE id = 1")
                    (ts,) = cur.fetchone()  # type: ignore[misc]
                    if ts:
                        lags.append(max(0.0, time.time() - float(ts)))
                    time.sleep(0.02)

        workers = [threading.Thread(target=f, daemon=True) for f in (heartbeat, reader)]
        for w in workers:
            w.start()
        await asyncio.sleep(1)
        lags.clear()
        qps, _, err = await sysbench(
            "oltp_write_only",
            port=port,
            user=f"{b.endpoint_id}.{user}",
            password=pw,
            db=db,
            threads=threads,
            seconds=seconds,
        )
        load = loadavg()
        stop.set()
        for w in workers:
            w.join()
        print(
            f"oltp_write_only on the primary, {threads} threads, {seconds} s: {qps:.0f} qps {err}"
        )
        print(
            f"read-only lag: p50 {pct(lags, 50) * 1000:.0f} ms, p99 {pct(lags, 99) * 1000:.0f} ms,"
            f" max {max(lags) * 1000:.0f} ms over {len(lags)} reads (loadavg {load})"
        )

        # 2. Convergence, then the same checksums.
        def converge() -> float:
            t0 = time.perf_counter()
            with primary.cursor() as cur:
                cur.execute("SELECT @@gtid_binlog_pos")
                (pos,) = cur.fetchone()  # type: ignore[misc]
            with replica.cursor() as cur:
                cur.execute("SELECT MASTER_GTID_WAIT(%s, 60)", (pos,))
            return (time.perf_counter() - t0) * 1000

        def checksums(conn: object) -> list[tuple[object, ...]]:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute("CHECKSUM TABLE sbtest1, hb")
                return list(cur.fetchall())

        converged = await asyncio.to_thread(converge)
        same = await asyncio.to_thread(checksums, primary) == await asyncio.to_thread(
            checksums, replica
        )
        print(f"converged {converged:.0f} ms after the writes stopped; checksums equal: {same}")
        primary.close()
        replica.close()
        await p.lifecycle.suspend(b.endpoint_id)
        # Its first start made its datadir; the wakes below start it from that.

        # 3. Cold wakes against a bare mariadbd on a copy of its datadir.
        wakes = []
        phases: dict[str, list[float]] = {}
        for _ in range(cycles):
            await p.lifecycle.suspend(ro.id)

            def wake() -> float:
                t = time.perf_counter()
                conn = mysql(port, f"{ro.id}.{user}", pw, db, connect_timeout=60)
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                took = (time.perf_counter() - t) * 1000
                conn.close()
                return took

            wakes.append(await asyncio.to_thread(wake))
            for phase, ms in p.start_metrics.last_start_timings.get(ro.id, {}).items():
                phases.setdefault(phase, []).append(ms)
        await p.lifecycle.suspend(ro.id)
        bare = []
        with tempfile.TemporaryDirectory(prefix="selkie-bare-") as tmp:
            work = Path(tmp)
            source = history.replicas.datadir(ro.id)
            shutil.copytree(source, work / "copy")
            for _ in range(cycles):
                started, _ = await bare_cycle(work / "copy", work, find_mariadbd())
                bare.append(started)
        w50, b50 = statistics.median(wakes), statistics.median(bare)
        print(
            f"cold wake of the read-only endpoint (proxy to first SELECT 1): p50 {w50:.0f} ms, "
            f"p99 {pct(wakes, 99):.0f} ms; bare mariadbd start on a copy of its datadir: p50 "
            f"{b50:.0f} ms; ratio {w50 / b50:.2f}x (loadavg {loadavg()})"
        )
        print(
            "  the start's phases, p50 ms: "
            + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in phases.items())
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--cycles", type=int, default=20)
    a = parser.parse_args()
    run(main(a.threads, a.seconds, a.cycles))
