"""The autoscaler: one loop over the active computes, growing those whose endpoints allow it
(``autoscaling_limit_min_cu`` < ``_max_cu``) under load and shrinking them when idle.

Every ``interval`` seconds it reads each compute's load (:meth:`ComputeDriver.load`) and
turns two readings into the size the compute wants (:func:`wanted`): enough CPU to stay at
most 90 % busy, memory besides the buffer pool at most 75 % of what the size gives it, and a
bigger cache when the pool is full and still reading from disk. :func:`decide` grows a
compute when every reading of the last ``up_seconds`` wanted more (up fast), and shrinks
it when every reading of the last ``down_seconds`` wanted less (down slowly), to what the
last quarter of them wanted; never above max nor below min. A resize is written with its
usage event (billing follows the size) and an ``autoscale`` operation saying why; one that
fails leaves the compute at its old size, with the reason in a failed ``autoscale``
operation, and is tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from selkie.compute.base import ComputeDriver, ComputeLoad
from selkie.compute.mariadb import CU_MEMORY, Sizing
from selkie.control.lifecycle import Lifecycle
from selkie.errors import ComputeError
from selkie.model import utcnow
from selkie.store import Store
from selkie.store import endpoints as rows
from selkie.store.endpoints import Sized
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

GRID = 0.25
CPU_TARGET = 0.9
MEMORY_TARGET = 0.75
CACHE_TARGET = 0.75
# Buffer pool misses per second (reads from disk) that say the working set does not fit.
MISSES_PER_SECOND = 50.0
# Seconds before a resize that failed is tried again.
RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class Want:
    at: float
    cu: float
    why: str


def grid(cu: float) -> float:
    """Up to the next size on the 0.25 CU grid."""
    return max(GRID, math.ceil(cu / GRID - 1e-9) * GRID)


def wanted(prev: ComputeLoad, cur: ComputeLoad, seconds: float) -> tuple[float, str]:
    """The size two readings ``seconds`` apart ask for, and why."""
    size = cur.cu
    cores = max(0.0, cur.cpu_seconds - prev.cpu_seconds) / seconds
    cpu = cores / CPU_TARGET
    if cores >= CPU_TARGET * size:
        # At its quota: what it would use without one is unknown; ask for twice as much.
        cpu = max(cpu, 2 * size)
    # Memory besides the buffer pool, against the half of a size's memory left to it.
    besides_pool = max(0, cur.memory_bytes - Sizing.for_cu(size).buffer_pool_bytes)
    memory = besides_pool / (MEMORY_TARGET * CU_MEMORY / 2)
    cache = 0.0
    misses = max(0, cur.pool_reads - prev.pool_reads) / seconds
    full = cur.pool_pages_total and cur.pool_pages_data / cur.pool_pages_total >= CACHE_TARGET
    if full and misses >= MISSES_PER_SECOND:
        cache = 2 * size
    cu, why = max(
        (cpu, f"CPU {cores:.2f} cores at {size} CU"),
        (memory, f"memory {cur.memory_bytes >> 20} MiB at {size} CU"),
        (cache, f"buffer pool full, {misses:.0f} reads/s from disk"),
    )
    return grid(cu), why


def decide(
    wants: list[Want],
    *,
    current: float,
    min_cu: float,
    max_cu: float,
    now: float,
    since: float,
    up_seconds: float,
    down_seconds: float,
) -> tuple[float, str] | None:
    """The size to move to now, and why; None to stay. ``wants`` are the readings taken
    since ``since`` (the compute's start or last resize), oldest first."""
    if current > max_cu or current < min_cu:
        return min(max(current, min_cu), max_cu), "outside the endpoint's limits"
    if now - since >= up_seconds:
        recent = [w for w in wants if w.at > now - up_seconds]
        if recent and all(w.cu > current for w in recent):
            target = min(min(w.cu for w in recent), max_cu)
            if target > current:
                return target, recent[-1].why
    if now - since >= down_seconds:
        recent = [w for w in wants if w.at > now - down_seconds]
        if recent and all(w.cu < current for w in recent):
            # To what the last quarter of the window asked for: the readings of a load
            # that was ending when the window began do not hold the size up for another.
            latest = [w for w in recent if w.at > now - down_seconds / 4] or recent[-1:]
            target = max(max(w.cu for w in latest), min_cu)
            if target < current:
                return target, f"{recent[-1].why} for {down_seconds:.0f} s"
    return None


@dataclass
class _Tracked:
    since: float
    last: ComputeLoad | None = None
    last_at: float = 0.0
    wants: deque[Want] = field(default_factory=lambda: deque(maxlen=4096))
    retry_at: float = 0.0


class Autoscaler:
    def __init__(
        self,
        *,
        store: Store,
        lifecycle: Lifecycle,
        driver: ComputeDriver,
        interval: float = 1.0,
        up_seconds: float = 2.0,
        down_seconds: float = 60.0,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.driver = driver
        self.interval = interval
        self.up_seconds = up_seconds
        self.down_seconds = down_seconds
        self.timer = timer
        self.clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.driver.supports_resize and self._task is None:
            self._task = spawn(self._main(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel(self._task)
            self._task = None

    async def _main(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("autoscaler pass failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        """One pass: read every active compute's load and resize those that need it."""
        sized = await asyncio.to_thread(rows.active_sizes, self.store)
        for gone in set(self._tracked) - {ep.id for ep in sized}:
            del self._tracked[gone]
        await asyncio.gather(*(self._one(ep) for ep in sized))

    async def _one(self, ep: Sized) -> None:
        if self.lifecycle.lock(ep.id).locked():
            return  # starting or stopping: its readings mean nothing now
        with contextlib.suppress(ComputeError):
            # A compute whose start was cut short keeps no boost (a no-op otherwise).
            await self.driver.end_boost(ep.id)
        if ep.min_cu == ep.max_cu == ep.current_cu:
            return
        try:
            load = await self.driver.load(ep.id)
        except ComputeError as exc:
            log.debug("no load reading of %s: %s", ep.id, exc)
            return
        if load is None:
            return
        if load.cu != ep.current_cu:
            # The compute and its record disagree (a resize cut short): the record wins.
            await self.resize(ep, ep.current_cu, "back to the size on record")
            return
        now = self.timer()
        tracked = self._tracked.get(ep.id)
        if tracked is None:
            tracked = self._tracked[ep.id] = _Tracked(since=now)
        if tracked.last is not None and now > tracked.last_at:
            cu, why = wanted(tracked.last, load, now - tracked.last_at)
            tracked.wants.append(Want(now, cu, why))
        tracked.last, tracked.last_at = load, now
        if now < tracked.retry_at:
            return
        move = decide(
            list(tracked.wants),
            current=ep.current_cu,
            min_cu=ep.min_cu,
            max_cu=ep.max_cu,
            now=now,
            since=tracked.since,
            up_seconds=self.up_seconds,
            down_seconds=self.down_seconds,
        )
        if move is not None:
            await self.resize(ep, *move)

    async def resize(self, ep: Sized, cu: float, why: str) -> bool:
        """Resize one compute now (the loop's decision, or a caller's); True when done."""
        async with self.lifecycle.lock(ep.id):
            try:
                await self.driver.resize(ep.id, cu)
            except ComputeError as exc:
                log.warning("resizing %s to %s CU failed: %s", ep.id, cu, exc.message)
                self._tracked[ep.id] = _Tracked(
                    since=self.timer(), retry_at=self.timer() + RETRY_SECONDS
                )
                await asyncio.to_thread(
                    rows.record_resize_failure, self.store, ep, cu, why, exc.message
                )
                return False
            self._tracked[ep.id] = _Tracked(since=self.timer())
            done = await asyncio.to_thread(
                rows.record_resize, self.store, ep, cu, self.clock(), why
            )
        if done:
            log.info("endpoint %s: %s → %s CU (%s)", ep.id, ep.current_cu, cu, why)
        return done
