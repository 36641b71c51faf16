"""Branch history: every branch's data kept durable in the archive, and rebuilt from it.

A branch's data is on a *timeline* (a line of history, :class:`TimelineRow`): the
timeline's base images and log segments in the archive are the truth, a datadir on local
disk is a cache of them, named by the marker file it carries. This service

- makes a timeline for every new branch, with a first base image before any compute runs
  on it, so the history is whole from its first transaction;
- has the safekeeper follow each running compute (:mod:`selkie.control.following`), and
  after a clean stop drain what the stream had not delivered (if anything) and take a base
  image in the background (cancelled if the branch starts again first: a wake never waits
  for it);
- rebuilds a datadir that is missing or belongs to another timeline (a new machine, a
  lost disk, a restore interrupted by a crash) from the newest base image and the log;
- on the scheduler's leader, every few seconds: records how far each timeline is durable,
  samples whether each compute's commits wait for the safekeeper, makes hot base images of
  long-running computes, purges binary log files the archive holds; and every ten minutes
  prunes history older than each project's ``history_retention_seconds``
  (:mod:`selkie.control.retention`).

Point-in-time branches and restores (:mod:`selkie.control.restores`) build on it.

:class:`History` is a facade over parts that each own one concern: base images
(:mod:`~selkie.control.images`), branches' data and restores
(:mod:`~selkie.control.branch_data`), the safekeeper following computes
(:mod:`~selkie.control.following`), read-only computes (:mod:`~selkie.control.replicas`)
and the leader's periodic work (:mod:`~selkie.control.upkeep`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path

from selkie import model
from selkie.archive import Archive
from selkie.archive.layout import TimelineRef
from selkie.compute.base import ComputeDriver
from selkie.compute.mariadb import durability_options
from selkie.config import Settings
from selkie.control.binlogs import Binlogs, default_listen
from selkie.control.branch_data import BranchData
from selkie.control.following import Following
from selkie.control.images import HistoryMetrics, Images
from selkie.control.places import Places
from selkie.control.points import Point
from selkie.control.replicas import Replicas
from selkie.control.retention import Retention
from selkie.control.timelines import Timelines
from selkie.control.upkeep import Upkeep
from selkie.model import utcnow
from selkie.safekeeper.accounts import ReplicationKey
from selkie.safekeeper.api import SafekeeperApi
from selkie.safekeeper.dump import HistorySource
from selkie.storage.base import StorageDriver
from selkie.storage.images import ChunkIndex
from selkie.storage.local import LocalStorage
from selkie.storage.restore import Restored, Tools
from selkie.store import Store
from selkie.store.tables import BranchRow, TimelineRow

log = logging.getLogger(__name__)


class History:
    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        archive: Archive,
        safekeeper: SafekeeperApi,
        storage: StorageDriver,
        driver: ComputeDriver,
        tools: Tools,
        key: ReplicationKey,
        binlog_source: HistorySource | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``binlog_source``: where this process's binlog server reads timelines (the
        in-process safekeeper's); None where the safekeeper is a process of its own,
        which serves them."""
        self.store = store
        self.settings = settings
        self.archive = archive
        self.safekeeper = safekeeper
        self.driver = driver
        self.tools = tools
        self.clock = clock
        self.where = Places(storage)
        self.chunks = ChunkIndex()
        self.timelines = Timelines(store, clock)
        self.metrics = HistoryMetrics()
        self.retention = Retention(store=store, archive=archive, chunks=self.chunks)
        self.images = Images(
            settings=settings,
            archive=archive,
            chunks=self.chunks,
            safekeeper=safekeeper,
            timelines=self.timelines,
            places=self.where,
            driver=driver,
            metrics=self.metrics,
        )
        self.data = BranchData(
            store=store,
            archive=archive,
            safekeeper=safekeeper,
            timelines=self.timelines,
            places=self.where,
            images=self.images,
            driver=driver,
            tools=tools,
            metrics=self.metrics,
        )
        self.binlogs = Binlogs(
            store=store,
            key=key,
            listen=settings.safekeeper_listen or default_listen(settings.data_dir),
            source=binlog_source,
        )
        self.following = Following(
            settings=settings,
            safekeeper=safekeeper,
            driver=driver,
            key=key,
            timeline_of=self.data.timeline_to_follow,
        )
        self.replicas = Replicas(
            timelines=self.timelines,
            binlogs=self.binlogs,
            safekeeper=safekeeper,
            storage=self.where.local,
            driver=driver,
            restore=self.data.restore,
        )
        self.upkeep = Upkeep(
            store=store,
            safekeeper=safekeeper,
            timelines=self.timelines,
            following=self.following,
            replicas=self.replicas,
            images=self.images,
            retention=self.retention,
            metrics=self.metrics,
            clock=clock,
        )

    @property
    def local(self) -> LocalStorage | None:
        """Branch datadirs on this machine (local computes); None where computes keep their
        data elsewhere (Kubernetes claims, reached through the API)."""
        return self.where.local

    @property
    def datadirs(self) -> LocalStorage:
        """The branches' datadirs on this machine; a Conflict where computes keep their
        data elsewhere."""
        return self.where.datadirs

    async def start(self) -> None:
        if self.where.local is not None:
            await self.where.local.remove_leftovers()
        await self.safekeeper.start()
        await self.binlogs.start()

    async def stop(self, *, image_timeout: float = 10.0) -> None:
        """Let base images in progress finish (for a while), then stop the safekeeper (it
        ships what it can first)."""
        await self.images.stop(timeout=image_timeout)
        await self.upkeep.stop()
        await self.binlogs.stop()
        await self.safekeeper.stop()

    def branch_lock(self, branch_id: str) -> asyncio.Lock:
        return self.data.branch_lock(branch_id)

    def current_timeline(self, branch_id: str) -> TimelineRow | None:
        return self.timelines.current(branch_id)

    # --- compute hooks ---------------------------------------------------------------------

    def server_options(self, settings: model.ProjectSettings) -> dict[str, str]:
        return durability_options(
            semi_sync=settings.durability is model.Durability.SYNC,
            sync_timeout_ms=self.settings.sync_commit_timeout_ms,
        )

    async def before_start(self, branch_id: str) -> None:
        """A compute of the branch is about to start: a base image being made of its
        stopped datadir is abandoned (the next suspend makes one)."""
        await self.images.before_start(branch_id)

    async def after_stop(self, endpoint_id: str, branch_id: str) -> None:
        """The compute stopped cleanly: everything in its binary log is made durable in the
        safekeeper before this returns; a base image follows in the background."""
        await self.following.detach(endpoint_id)
        await self.images.after_stop(branch_id)

    async def make_image(
        self, branch_id: str, ref: TimelineRef, seq: int, *, kind: str, datadir: Path | None = None
    ) -> None:
        await self.images.make(branch_id, ref, seq, kind=kind, datadir=datadir)

    async def wait_images(self) -> None:
        """Until the base images being made are done (tests, benchmarks, shutdown); those
        waiting to begin begin now."""
        await self.images.wait()

    # --- branch data -----------------------------------------------------------------------

    async def ensure_branch(
        self,
        branch: BranchRow,
        project: model.Project,
        *,
        create: Callable[[], Awaitable[None]],
    ) -> None:
        """Make sure the branch's datadir exists and holds its current timeline (see
        :meth:`BranchData.ensure_branch`)."""
        await self.data.ensure_branch(branch, project, create=create)

    async def timeline_to_follow(self, branch_id: str, endpoint_id: str) -> TimelineRow | None:
        return await self.data.timeline_to_follow(branch_id, endpoint_id)

    async def branch_from_point(self, branch: BranchRow, project: model.Project) -> None:
        await self.data.branch_from_point(branch, project)

    async def rebuild(self, branch_id: str, row: TimelineRow) -> None:
        await self.data.rebuild(branch_id, row)

    # --- restores (:mod:`selkie.control.restores`) ----------------------------------------

    async def timeline_at(self, branch_id: str, point: Point) -> TimelineRow:
        return await self.data.timeline_at(branch_id, point)

    def staging(self, branch_id: str) -> AbstractAsyncContextManager[Path]:
        """A directory to stage the branch's new data in, removed when the block ends."""
        return self.data.staging(branch_id)

    async def restore_into(
        self, source: TimelineRow, point: Point, staging: Path, progress: Callable[[str], None]
    ) -> Restored:
        return await self.data.restore_into(source, point, staging, progress)

    async def image_staged(self, branch_id: str, ref: TimelineRef, seq: int, staging: Path) -> None:
        await self.data.image_staged(branch_id, ref, seq, staging)

    async def swap_in(
        self,
        branch_id: str,
        staging: Path,
        *,
        switch: Callable[[], Awaitable[str | None]],
        like: str | None = None,
    ) -> None:
        await self.data.swap_in(branch_id, staging, switch=switch, like=like)

    def forget_datadir(self, branch_id: str, timeline_id: str, seq: int) -> None:
        """The branch's datadir was replaced: what was known of the old one is void."""
        self.images.forget_datadir(branch_id, timeline_id, seq)

    def note_restore(self, seconds: float) -> None:
        self.metrics.note_restore(seconds)

    # --- periodic work (the scheduler's leader) ------------------------------------------

    async def tick(self, now: datetime) -> None:
        await self.upkeep.tick(now)

    async def hot_images(self) -> None:
        await self.upkeep.hot_images()

    async def hot_image(self, endpoint_id: str, branch_id: str, ref: TimelineRef) -> int:
        """A base image of a running compute; returns its position."""
        return await self.images.hot_image(endpoint_id, branch_id, ref)

    async def prune(self, now: datetime | None = None) -> int:
        return await self.upkeep.prune(now)

    async def project_bytes(self) -> dict[str, int]:
        return await self.retention.project_bytes()
