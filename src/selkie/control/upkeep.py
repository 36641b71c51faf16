"""The history service's periodic work on the scheduler's leader, every few seconds:
record how far each timeline is durable, sample whether each compute's commits wait for
the safekeeper and how far read-only computes have replayed, make hot base images of
long-running computes, purge binary log files the archive holds; and every ten minutes
prune history older than each project's ``history_retention_seconds``
(:mod:`selkie.control.retention`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from selkie.control.following import Following
from selkie.control.images import HistoryMetrics, Images
from selkie.control.replicas import Replicas
from selkie.control.retention import Retention
from selkie.control.timelines import Timelines
from selkie.model import utcnow
from selkie.safekeeper.api import SafekeeperApi
from selkie.store import Store
from selkie.store.endpoints import active_read_only_ids
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

# How often the leader prunes history past the retention windows.
PRUNE_EVERY = timedelta(minutes=10)


class Upkeep:
    def __init__(
        self,
        *,
        store: Store,
        safekeeper: SafekeeperApi,
        timelines: Timelines,
        following: Following,
        replicas: Replicas,
        images: Images,
        retention: Retention,
        metrics: HistoryMetrics,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.safekeeper = safekeeper
        self.timelines = timelines
        self.following = following
        self.replicas = replicas
        self.images = images
        self.retention = retention
        self.metrics = metrics
        self.clock = clock
        self._sampling: asyncio.Task[None] | None = None
        # When each periodic step last ran (the leader ticks twice a second).
        self._last_run: dict[str, float] = {}

    async def stop(self) -> None:
        await cancel(self._sampling)

    async def tick(self, now: datetime) -> None:
        """Record how far each timeline is durable, sample whether sync commits still wait
        for the safekeeper, image long-running computes, prune (every PRUNE_EVERY)."""
        periodic: list[tuple[str, float, Callable[[], Awaitable[Any]]]] = [
            ("positions", 5.0, self._note_positions),
            ("semi_sync", 2.0, self.following.sample_semi_sync),
            ("hot_images", 5.0, self.hot_images),
            ("replicas", 2.0, self._sample_replicas),
            ("purge", 30.0, self.following.purge_binlogs),
            ("prune", PRUNE_EVERY.total_seconds(), lambda: self.prune(now)),
        ]
        steps = []
        for name, every, step in periodic:
            if now.timestamp() - self._last_run.get(name, 0.0) >= every:
                self._last_run[name] = now.timestamp()
                steps.append(step)
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("history: periodic step failed; going on")

    async def hot_images(self) -> None:
        """A base image of each compute the safekeeper follows that is due one."""
        await self.images.hot_images(self.following.endpoints)

    async def _sample_replicas(self) -> None:
        """In a task of its own: a compute held still never holds up the leader's tick."""
        if self._sampling is None or self._sampling.done():
            ids = await asyncio.to_thread(active_read_only_ids, self.store)
            self._sampling = spawn(self.replicas.sample(ids), name="replica-status")

    async def _note_positions(self) -> None:
        for st in await self.safekeeper.timelines():
            await asyncio.to_thread(self.timelines.note_position, st.timeline_id, st.last_seq)

    async def prune(self, now: datetime | None = None) -> int:
        """History past each project's window (see :class:`Retention`); objects deleted."""
        deleted = await self.retention.prune(now or self.clock())
        self.metrics.pruned_objects += deleted
        return deleted
