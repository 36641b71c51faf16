"""Branch creation: parents of 250 MB (--sizes), suspended right after writes and active
under writes, on an XFS image with reflink (loop-mounted; root) and on the plain data dir,
in one run. For each, --repeat branches: the time from the API's create to the branch's
data ready (the operation finished; p50 and max), the first child's first query (its
start included), how long the parent was held still, and for an active parent under a
write load the p99 of its writes during the branches against the p99 just before. The
platform runs its defaults (durable storage on); the same run measures the copy alone
(archive off) as the baseline, with /proc/loadavg beside each row.

    .venv/bin/python bench/branch.py [--sizes 250] [--repeat 5] [--archive on|off|both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
from _common import pct, run

from selkie.config import load_settings
from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform
from selkie.storage.clone import can_clone


@contextlib.contextmanager
def xfs_mount(size: str = "8G") -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="selkie-bench-xfs-", dir="/tmp"))
    image, mount = work / "xfs.img", work / "mnt"
    mount.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def connect(platform: Platform, created: Created, endpoint_id: str) -> pymysql.Connection:
    from selkie.store.tables import EndpointRow

    with platform.store.read() as s:
        row = s.get(EndpointRow, endpoint_id)
        assert row is not None and row.compute_address
        port = int(row.compute_address.rsplit(":", 1)[1])
    owner = created.roles[0]
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=owner.name,
        password=owner.password or "",
        database=created.databases[0].name,
        autocommit=True,
    )


def load(platform: Platform, created: Created, megabytes: int) -> None:
    conn = connect(platform, created, created.endpoints[0].id)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE big (i INT PRIMARY KEY, b LONGBLOB)")
        cur.execute("CREATE TABLE w (i INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        for i in range(megabytes):
            cur.execute(f"INSERT INTO big VALUES ({i}, REPEAT(MD5({i}), 32768))")
    conn.close()


class Writer:
    """Single-row commits on the parent, each one's latency noted with its time."""

    def __init__(self, platform: Platform, created: Created) -> None:
        self.conn = connect(platform, created, created.endpoints[0].id)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                t = time.perf_counter()
                cur.execute("INSERT INTO w (v) VALUES (1)")
                self.samples.append((t, (time.perf_counter() - t) * 1000))

    def between(self, start: float, end: float) -> list[float]:
        return [ms for t, ms in self.samples if start <= t <= end]


def write_some(platform: Platform, created: Created, round_: int) -> None:
    """A few MB changed on the parent (it must be running)."""
    conn = connect(platform, created, created.endpoints[0].id)
    with conn.cursor() as cur:
        cur.execute(f"UPDATE big SET b = REPEAT(MD5(i + {round_}), 32768) WHERE i < 4")
    conn.close()


async def one(
    platform: Platform, created: Created, name: str, active: bool, repeat: int
) -> dict[str, float]:
    who = local_principal(platform.control)
    pid, ep = created.project.id, created.endpoints[0].id
    writer = None
    if active:
        await platform.lifecycle.start(ep)
        writer = Writer(platform, created)
        writer.thread.start()
        await asyncio.sleep(2)
    creates: list[float] = []
    pauses: list[float] = []
    first: Created | None = None
    t_start = time.perf_counter()
    for n in range(repeat):
        if not active:
            # Written to, suspended, branched at once (its suspend image still being made).
            await platform.lifecycle.start(ep)
            await asyncio.to_thread(write_some, platform, created, n)
            await platform.lifecycle.suspend(ep)
        t0 = time.perf_counter()
        child = await asyncio.to_thread(
            platform.control.branches.create,
            who,
            pid,
            name=f"{name}-{n}",
            endpoints=[{"type": "read_write"}],
        )
        await platform.runner.wait_idle(timeout=600)
        creates.append((time.perf_counter() - t0) * 1000)
        if active:
            pauses.append(platform.driver.last_pause_ms.get(ep, 0.0))  # type: ignore[attr-defined]
        first = first or child
    t_end = time.perf_counter()
    out = {"create_p50_ms": pct(creates, 50), "create_max_ms": max(creates)}
    if writer is not None:
        await asyncio.sleep(1)
        writer.stop.set()
        writer.thread.join()
        out["p99_before_ms"] = pct(writer.between(t_start - 2, t_start), 99)
        during = writer.between(t_start, t_end)
        out["p99_during_ms"] = pct(during, 99) if during else 0.0
        out["pause_ms"] = max(pauses)
        writer.conn.close()
    assert first is not None
    cep = first.endpoints[0].id
    t2 = time.perf_counter()
    await platform.lifecycle.start(cep)
    conn = await asyncio.to_thread(connect, platform, created, cep)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM big")
        cur.fetchone()
    conn.close()
    out["first_query_ms"] = (time.perf_counter() - t2) * 1000
    await platform.lifecycle.suspend(cep)
    if platform.history is not None:
        await platform.history.wait_images()
    return out


async def measure(
    base: Path, megabytes: int, env: dict[str, str], repeat: int
) -> dict[str, dict[str, float]]:
    data = base / f"data-{megabytes}"
    platform = Platform.open(
        load_settings(environ={"SELKIE_DATA_DIR": str(data), "SELKIE_LOG_LEVEL": "warning", **env})
    )
    await platform.start()
    try:
        who = local_principal(platform.control)
        created = await asyncio.to_thread(
            platform.control.projects.create, who, name=f"parent{megabytes}"
        )
        await platform.lifecycle.start(created.endpoints[0].id)
        await asyncio.to_thread(load, platform, created, megabytes)
        suspended = await one(platform, created, "from-suspended", False, repeat)
        suspended["load"] = float(Path("/proc/loadavg").read_text().split()[0])
        active = await one(platform, created, "from-active", True, repeat)
        active["load"] = float(Path("/proc/loadavg").read_text().split()[0])
        return {"suspended": suspended, "active": active}
    finally:
        await platform.stop()
        platform.close()


async def main(sizes: list[int], archive: str, repeat: int) -> None:
    modes = {"on": ["on"], "off": ["off"], "both": ["on", "off"]}[archive]
    results: dict[tuple[str, str, int], dict[str, dict[str, float]]] = {}
    with xfs_mount() as xfs, tempfile.TemporaryDirectory(prefix="selkie-bench-") as plain:
        for fs, base in (("xfs reflink", xfs), ("plain (ext4)", Path(plain))):
            for mode in modes:
                env = {"SELKIE_ARCHIVE_URL": "off"} if mode == "off" else {}
                for mb in sizes:
                    results[(fs, mode, mb)] = await measure(base / mode, mb, env, repeat)
            print(f"{fs}: clones {'yes' if can_clone(base) else 'no'}", flush=True)
    print(f"\nbranch creation, {repeat} per row, ms (archive on: the default; off: the copy)\n")
    header = f"{'filesystem':<14}{'archive':>8}{'parent':>8}{'state':>11}{'p50':>8}{'max':>8}"
    print(header + f"{'1st query':>11}{'pause':>8}{'p99 before':>12}{'p99 during':>12}{'load':>6}")
    for (fs, mode, mb), by_state in results.items():
        for state, r in by_state.items():
            print(
                f"{fs:<14}{mode:>8}{mb:>6}MB{state:>11}{r['create_p50_ms']:>8.0f}"
                f"{r['create_max_ms']:>8.0f}{r['first_query_ms']:>11.0f}"
                f"{r.get('pause_ms', 0):>8.1f}{r.get('p99_before_ms', 0):>12.1f}"
                f"{r.get('p99_during_ms', 0):>12.1f}{r['load']:>6.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="250")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--archive", choices=["on", "off", "both"], default="both")
    a = parser.parse_args()
    run(main([int(x) for x in a.sizes.split(",")], a.archive, a.repeat))
