"""Branch creation: parents of 50 MB and 1 GB (--sizes), suspended and active, on an XFS
image with reflink (loop-mounted; root) and on the plain data dir, in one run. For each:
the time from the API's create to the branch's data ready (the operation finished), the
child's first query (its start included), how long the parent was held still, and for an
active parent under a write load the p99 of its writes during the branch against the p99
just before. The platform runs its defaults (durable storage on: a new branch's first
base image is part of its creation); --archive off gives the copy alone.

    .venv/bin/python bench/branch.py [--sizes 50,1024] [--archive off]
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


async def one(platform: Platform, created: Created, name: str, active: bool) -> dict[str, float]:
    who = local_principal(platform.control)
    pid, ep = created.project.id, created.endpoints[0].id
    writer = None
    if active:
        await platform.lifecycle.start(ep)
        writer = Writer(platform, created)
        writer.thread.start()
        await asyncio.sleep(2)
    else:
        await platform.lifecycle.suspend(ep)
        # A parent suspended a while ago: its suspend image (background) is done.
        history = platform.history
        while history is not None and created.branch.id in history._images:
            await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    child = await asyncio.to_thread(
        platform.control.branches.create, who, pid, name=name, endpoints=[{"type": "read_write"}]
    )
    await platform.runner.wait_idle(timeout=600)
    t1 = time.perf_counter()
    out = {"create_ms": (t1 - t0) * 1000}
    if writer is not None:
        await asyncio.sleep(1)
        writer.stop.set()
        writer.thread.join()
        before = writer.between(t0 - 2, t0)
        during = writer.between(t0, t1)
        out["p99_before_ms"] = pct(before, 99)
        out["p99_during_ms"] = pct(during, 99) if during else 0.0
        out["pause_ms"] = platform.driver.last_pause_ms.get(ep, 0.0)  # type: ignore[attr-defined]
        writer.conn.close()
    cep = child.endpoints[0].id
    t2 = time.perf_counter()
    await platform.lifecycle.start(cep)
    conn = await asyncio.to_thread(connect, platform, created, cep)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM big")
        cur.fetchone()
    conn.close()
    out["first_query_ms"] = (time.perf_counter() - t2) * 1000
    await platform.lifecycle.suspend(cep)
    return out


async def measure(base: Path, megabytes: int, env: dict[str, str]) -> dict[str, dict[str, float]]:
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
        return {
            "suspended": await one(platform, created, "from-suspended", active=False),
            "active": await one(platform, created, "from-active", active=True),
        }
    finally:
        await platform.stop()
        platform.close()


async def main(sizes: list[int], archive: str) -> None:
    env = {"SELKIE_ARCHIVE_URL": "off"} if archive == "off" else {}
    results: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    with xfs_mount() as xfs, tempfile.TemporaryDirectory(prefix="selkie-bench-") as plain:
        for fs, base in (("xfs reflink", xfs), ("plain (ext4)", Path(plain))):
            for mb in sizes:
                results[(fs, mb)] = await measure(base, mb, env)
            print(f"{fs}: clones {'yes' if can_clone(base) else 'no'}", flush=True)
    print(f"\nbranch creation (archive {archive}), ms\n")
    header = f"{'filesystem':<14}{'parent':>8}{'state':>11}{'create':>10}{'1st query':>11}"
    print(header + f"{'pause':>9}{'p99 before':>12}{'p99 during':>12}")
    for (fs, mb), by_state in results.items():
        for state, r in by_state.items():
            print(
                f"{fs:<14}{mb:>6}MB{state:>11}{r['create_ms']:>10.0f}{r['first_query_ms']:>11.0f}"
                f"{r.get('pause_ms', 0):>9.1f}{r.get('p99_before_ms', 0):>12.1f}"
                f"{r.get('p99_during_ms', 0):>12.1f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="50,1024")
    parser.add_argument("--archive", choices=["on", "off"], default="on")
    a = parser.parse_args()
    run(main([int(x) for x in a.sizes.split(",")], a.archive))
