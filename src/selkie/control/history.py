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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from selkie import model
from selkie.archive import Archive
from selkie.archive.binlog import domain_seq
from selkie.archive.layout import TimelineRef
from selkie.compute.base import ComputeDriver
from selkie.compute.mariadb import durability_options
from selkie.config import Settings
from selkie.control.binlogs import Binlogs, default_listen
from selkie.control.following import Following
from selkie.control.points import NO_IMAGES, Point, parse_lsn, timeline_at
from selkie.control.replicas import Replicas
from selkie.control.retention import Retention
from selkie.control.timelines import Timelines
from selkie.errors import Conflict, SelkieError
from selkie.model import utcnow
from selkie.safekeeper.accounts import ReplicationKey
from selkie.safekeeper.api import SafekeeperApi
from selkie.safekeeper.dump import HistorySource
from selkie.storage.base import Restorable, StorageDriver
from selkie.storage.deltas import store_image
from selkie.storage.images import (
    HOT,
    INITIAL,
    SUSPEND,
    ChunkIndex,
    ImageCache,
    inherited,
    list_images,
)
from selkie.storage.local import LocalStorage, crash_consistent, datadir_position
from selkie.storage.replay import replay_server
from selkie.storage.restore import Restored, Tail, Target, Tools, restore
from selkie.store import Store
from selkie.store.endpoints import active_read_only_ids
from selkie.store.tables import BranchRow, TimelineRow
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often the leader prunes history past the retention windows.
PRUNE_EVERY = timedelta(minutes=10)
# After a failed hot base image, the next try waits this long (seconds).
HOT_IMAGE_RETRY = 60.0
# A suspend's base image begins this long after the stop (seconds): a branch made of the
# parent right after its suspend clones files the image is not reading meanwhile (the
# clone waits on each file's readers), and a wake that comes soon finds none to cancel.
SUSPEND_IMAGE_DELAY = 2.0


@dataclass
class HistoryMetrics:
    base_images: int = 0
    base_image_bytes: int = 0
    restores: int = 0
    restore_seconds: list[float] = field(default_factory=list)
    pruned_objects: int = 0


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
        self.storage = storage
        # Branch datadirs on this machine (local computes); None where computes keep their
        # data elsewhere (Kubernetes claims, which base images and restores reach through
        # the API: ``places``).
        self.local = storage if isinstance(storage, LocalStorage) else None
        self.claims = storage if self.local is None and isinstance(storage, Restorable) else None
        self.driver = driver
        self.tools = tools
        self.clock = clock
        self.chunks = ChunkIndex()
        self.timelines = Timelines(store, clock)
        self.metrics = HistoryMetrics()
        self.retention = Retention(store=store, archive=archive, chunks=self.chunks)
        self._images: dict[str, asyncio.Task[None]] = {}
        self._hurry = asyncio.Event()
        self._caches: dict[str, ImageCache] = {}
        # The (timeline, seq) of the last image made per branch: a suspend with nothing new
        # since makes none.
        self._last_image: dict[str, tuple[str, int]] = {}
        # Timelines known to have a base image in the archive.
        self._imaged: set[str] = set()
        self._branch_locks: dict[str, asyncio.Lock] = {}
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
            timeline_of=self.timeline_to_follow,
        )
        self.replicas = Replicas(
            timelines=self.timelines,
            binlogs=self.binlogs,
            safekeeper=safekeeper,
            storage=self.local,
            driver=driver,
            restore=self._restore,
        )
        # Per branch: when its last image was made (monotonic) and the log bytes then.
        self._image_mark: dict[str, tuple[float, int]] = {}
        self._image_retry_at: dict[str, float] = {}
        self._sampling: asyncio.Task[None] | None = None
        # When each periodic step last ran (the leader ticks twice a second).
        self._last_run: dict[str, float] = {}

    @property
    def datadirs(self) -> LocalStorage:
        """The branches' datadirs on this machine; a Conflict where computes keep their
        data elsewhere."""
        if self.local is None:
            raise Conflict(NO_IMAGES)
        return self.local

    @property
    def places(self) -> Restorable:
        """Where restores, rebuilds and hot copies stage data and swap it in: the
        datadirs on this machine, or Kubernetes claims (filled through a pod)."""
        place = self.local or self.claims
        if place is None:
            raise Conflict(NO_IMAGES)
        return place

    async def start(self) -> None:
        if self.local is not None:
            await self.local.remove_leftovers()
        await self.safekeeper.start()
        await self.binlogs.start()

    async def stop(self, *, image_timeout: float = 10.0) -> None:
        """Let base images in progress finish (for a while), then stop the safekeeper (it
        ships what it can first)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_images(), image_timeout)
        for task in list(self._images.values()):
            await cancel(task)
        await cancel(self._sampling)
        await self.binlogs.stop()
        await self.safekeeper.stop()

    def branch_lock(self, branch_id: str) -> asyncio.Lock:
        return self._branch_locks.setdefault(branch_id, asyncio.Lock())

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

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
        await cancel(self._images.pop(branch_id, None))

    async def after_stop(self, endpoint_id: str, branch_id: str) -> None:
        """The compute stopped cleanly: everything in its binary log is made durable in the
        safekeeper before this returns; a base image follows in the background."""
        await self.following.detach(endpoint_id)
        row = await self._db(self.current_timeline, branch_id)
        if row is None:
            return
        ref = TimelineRef(row.project_id, row.id)
        if self.local is None:
            # No datadir here to drain or image: what the stream did not deliver before
            # the stop stays in the compute's binary log on its claim, streamed at its
            # next start.
            for st in await self.safekeeper.timelines():
                if st.timeline_id == row.id:
                    await self._db(self.timelines.note_position, row.id, st.last_seq)
            return
        datadir = self.local.datadir(branch_id)
        last = await self.safekeeper.drain(ref, datadir)
        await self._db(self.timelines.note_position, row.id, last)
        if self._last_image.get(branch_id) == (row.id, last):
            return
        await cancel(self._images.pop(branch_id, None))
        self._images[branch_id] = spawn(
            self._image(branch_id, ref, last, SUSPEND, delay=SUSPEND_IMAGE_DELAY),
            name=f"image-{branch_id}",
        )

    async def _image(
        self, branch_id: str, ref: TimelineRef, seq: int, kind: str, *, delay: float = 0.0
    ) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                # wait_images() (a shutdown, a test) does not wait out the delay.
                await asyncio.wait_for(self._hurry.wait(), delay)
            await self.make_image(branch_id, ref, seq, kind=kind)
        except asyncio.CancelledError:
            log.info(
                "base image of %s abandoned (the branch started again, or Selkie stops)", branch_id
            )
            raise
        except SelkieError as exc:
            log.warning(
                "base image of %s failed (the next suspend tries again): %s", branch_id, exc
            )
        finally:
            if self._images.get(branch_id) is asyncio.current_task():
                del self._images[branch_id]

    async def make_image(
        self, branch_id: str, ref: TimelineRef, seq: int, *, kind: str, datadir: Path | None = None
    ) -> None:
        # The branch's own datadir: a delta of its previous image when that is small. A
        # staged copy (a new timeline, a hot copy): a full image.
        cache = self._caches.setdefault(branch_id, ImageCache()) if datadir is None else None
        manifest = await store_image(
            self.archive,
            self.chunks,
            ref,
            datadir or self.datadirs.datadir(branch_id),
            seq=seq,
            kind=kind,
            taken_us=time.time_ns() // 1000,
            cache=cache,
        )
        self._last_image[branch_id] = (ref.timeline_id, seq)
        self._imaged.add(ref.timeline_id)
        self._image_mark[branch_id] = (time.monotonic(), await self._appended(ref))
        self.metrics.base_images += 1
        self.metrics.base_image_bytes += manifest.size
        log.info(
            "base image of %s at %d (%s, %s, %d bytes)",
            branch_id,
            seq,
            kind,
            "delta" if manifest.parent else "full",
            manifest.size,
        )

    async def wait_images(self) -> None:
        """Until the base images being made are done (tests, benchmarks, shutdown); those
        waiting to begin begin now."""
        self._hurry.set()
        try:
            for task in list(self._images.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.shield(task)
        finally:
            self._hurry.clear()

    # --- branch data -----------------------------------------------------------------------

    async def ensure_branch(
        self,
        branch: BranchRow,
        project: model.Project,
        *,
        create: Callable[[], Awaitable[None]],
    ) -> None:
        """Make sure the branch's datadir exists and holds its current timeline: ``create``
        makes a new branch's data (template or copy of the parent); a branch made at a past
        point of its parent gets the parent's history at that point; a datadir of a branch
        with history that is missing or stale is rebuilt from the archive."""
        if self.local is None:
            await self._ensure_claim(branch, project, create)
            return
        async with self.branch_lock(branch.id):
            row = await self._db(self.current_timeline, branch.id)
            exists = await asyncio.to_thread(self.datadirs.branch_exists, branch.id)
            if row is None:
                at_point = branch.parent_timestamp is not None or branch.parent_lsn is not None
                if at_point and branch.parent_id is not None and not exists:
                    await self.branch_from_point(branch, project)
                    return
                if not exists:
                    await create()
                    parent_cache = self._caches.get(branch.parent_id or "")
                    if parent_cache is not None:
                        # A copy of the parent: its first image reads only what changed.
                        self._caches[branch.id] = await asyncio.to_thread(
                            inherited, parent_cache, self.datadirs.datadir(branch.id)
                        )
                await self._first_timeline(branch, project.id)
                return
            if exists and await asyncio.to_thread(self.datadirs.timeline_of, branch.id) == row.id:
                return
            await self.rebuild(branch.id, row)

    async def _ensure_claim(
        self, branch: BranchRow, project: model.Project, create: Callable[[], Awaitable[None]]
    ) -> None:
        """A branch whose data is a Kubernetes claim: made when it has none yet (at a past
        point of its parent: restored from the parent's history); a branch with history
        whose claim is gone is rebuilt from the archive into a new one."""
        async with self.branch_lock(branch.id):
            row = await self._db(self.current_timeline, branch.id)
            exists = await asyncio.to_thread(self.storage.branch_exists, branch.id)
            if row is None and (branch.parent_timestamp or branch.parent_lsn) and not exists:
                await self.branch_from_point(branch, project)
                return
            if exists:
                return
            if row is not None:
                # Never a new empty volume in its place: the data as its history holds it.
                await self.rebuild(branch.id, row)
                return
            await create()

    async def timeline_to_follow(self, branch_id: str, endpoint_id: str) -> TimelineRow | None:
        """The branch's current timeline, which the safekeeper follows its compute on. A
        branch whose data lives out of reach starts one at its running compute's position
        the first time (before anything writes: the start holds clients back until the
        safekeeper follows), under its parent's timeline at that position when it is a
        copy of one."""
        row = await self._db(self.current_timeline, branch_id)
        if row is not None or self.local is not None:
            return row
        async with self.branch_lock(branch_id):
            row = await self._db(self.current_timeline, branch_id)
            if row is not None:
                return row
            ((pos,),) = (await self.driver.execute(endpoint_id, ["SELECT @@gtid_binlog_pos"]))[0]
            seq = domain_seq(pos)
            return await self._db(self.timelines.begin_followed, branch_id, seq)

    async def _first_timeline(self, branch: BranchRow, project_id: str) -> None:
        """A branch's data was just made: start its history. A copy of its parent's tip
        begins a timeline whose ancestor is the parent's, at the position the copy holds:
        nothing is written to the archive (its first base image comes after its first
        suspend, or as a hot image; until then a restore reads the parent's history up to
        the branch point, then its own log). A copy of a running parent (a clone made while
        it was held still) holds the transactions whose binary log was written whole: its
        compute's first start recovers it (prepared transactions committed by that log).

        A new root branch (or a copy of a parent without history) gets a first base image,
        in the archive before the timeline is recorded: its history is whole from its first
        transaction."""
        branch_id = branch.id
        datadir = self.datadirs.datadir(branch_id)
        parent = (
            await self._db(self.current_timeline, branch.parent_id) if branch.parent_id else None
        )
        timeline_id = model.new_id("tl")
        if parent is not None:
            seq = await asyncio.to_thread(datadir_position, datadir)
            await self._db(
                lambda: self.timelines.begin(
                    branch_id,
                    project_id,
                    start_seq=seq,
                    parent=(parent.id, seq),
                    timeline_id=timeline_id,
                    parent_lsn=f"0-1-{seq}" if seq else None,
                )
            )
            await asyncio.to_thread(LocalStorage.mark_timeline, datadir, timeline_id)
            return
        if await asyncio.to_thread(crash_consistent, datadir):
            async with replay_server(datadir, self.tools):
                pass
        seq = await asyncio.to_thread(datadir_position, datadir)
        await self.make_image(branch_id, TimelineRef(project_id, timeline_id), seq, kind=INITIAL)
        await self._db(
            lambda: self.timelines.begin(
                branch_id,
                project_id,
                start_seq=seq,
                timeline_id=timeline_id,
                parent_lsn=f"0-1-{seq}" if seq else None,
            )
        )
        await asyncio.to_thread(LocalStorage.mark_timeline, datadir, timeline_id)

    async def local_tail(self, ref: TimelineRef) -> Tail | None:
        """What this safekeeper holds of the timeline beyond the archive."""
        archived = await self.safekeeper.archived_position(ref)
        return await self.safekeeper.local_tail(ref, archived)

    async def _restore(
        self,
        row: TimelineRow,
        target: Target,
        staging: Path,
        progress: Callable[[str], None] | None = None,
    ) -> Restored:
        """The timeline's data at ``target`` in ``staging``: its own history, and its
        ancestors' up to the branch points where it is not enough."""
        ref = TimelineRef(row.project_id, row.id)
        return await restore(
            self.archive,
            ref,
            target,
            staging,
            tools=self.tools,
            tail=await self.local_tail(ref),
            ancestry=await self._db(self.timelines.ancestry, row),
            tail_of=self.local_tail,
            progress=progress,
        )

    async def restore_into(
        self, source: TimelineRow, point: Point, staging: Path, progress: Callable[[str], None]
    ) -> Restored:
        """The source timeline's data at ``point``, rebuilt in ``staging``, with what this
        safekeeper holds beyond the archive."""
        return await self._restore(source, point.target, staging, progress)

    def _timeline_at(self, branch_id: str, point: Point) -> TimelineRow:
        with self.store.read() as s:
            return timeline_at(s, branch_id, point)

    async def branch_from_point(self, branch: BranchRow, project: model.Project) -> None:
        """Make a new branch's data from its parent's history at the branch's point."""
        assert branch.parent_id is not None
        seq = parse_lsn(branch.parent_lsn, "parent_lsn") if branch.parent_lsn else None
        point = Point(at=branch.parent_timestamp, seq=seq)
        source = await self._db(self._timeline_at, branch.parent_id, point)
        started = time.monotonic()
        staging = self.places.staging_dir(branch.id)
        timeline_id = model.new_id("tl")
        try:
            restored = await self.restore_into(source, point, staging, lambda _: None)
            # No image: the new timeline's ancestor is the source, at the point restored.
            await asyncio.to_thread(LocalStorage.mark_timeline, staging, timeline_id)
            await self._db(
                lambda: self.timelines.begin(
                    branch.id,
                    project.id,
                    start_seq=restored.seq,
                    parent=(source.id, restored.seq),
                    timeline_id=timeline_id,
                    parent_lsn=f"0-1-{restored.seq}",
                )
            )
            await self.places.swap_in(branch.id, staging, like=branch.parent_id)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        self.forget_datadir(branch.id, timeline_id, restored.seq)
        self.note_restore(time.monotonic() - started)

    def forget_datadir(self, branch_id: str, timeline_id: str, seq: int) -> None:
        """The branch's datadir was replaced: what was known of the old one is void."""
        self._caches.pop(branch_id, None)
        self._last_image[branch_id] = (timeline_id, seq)

    async def rebuild(self, branch_id: str, row: TimelineRow) -> None:
        """Restore the branch's datadir from its timeline's history (everything the archive
        and this safekeeper hold), then swap it in."""
        log.warning("rebuilding the data of branch %s from the archive", branch_id)
        started = time.monotonic()
        staging = self.places.staging_dir(branch_id)
        try:
            restored = await self._restore(row, Target(), staging)
            await asyncio.to_thread(LocalStorage.mark_timeline, staging, row.id)
            await self.places.swap_in(branch_id, staging)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        await self._db(self.timelines.note_position, row.id, restored.seq)
        self.forget_datadir(branch_id, row.id, restored.base_seq)
        self.note_restore(time.monotonic() - started)

    def note_restore(self, seconds: float) -> None:
        self.metrics.restores += 1
        self.metrics.restore_seconds.append(seconds)
        del self.metrics.restore_seconds[:-1000]

    # --- periodic work (the scheduler's leader) ------------------------------------------

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

    async def _sample_replicas(self) -> None:
        """In a task of its own: a compute held still never holds up the leader's tick."""
        if self._sampling is None or self._sampling.done():
            ids = await self._db(active_read_only_ids, self.store)
            self._sampling = spawn(self.replicas.sample(ids), name="replica-status")

    async def _note_positions(self) -> None:
        for st in await self.safekeeper.timelines():
            await self._db(self.timelines.note_position, st.timeline_id, st.last_seq)

    async def hot_images(self) -> None:
        """A base image of each compute that ran base_image_interval seconds or wrote
        base_image_log_bytes of log since its branch's last one (mariadb-backup, which
        blocks commits only for a moment)."""
        for endpoint_id, branch_id in list(self.following.endpoints.items()):
            row = await self._db(self.current_timeline, branch_id)
            if row is None:
                continue
            ref = TimelineRef(row.project_id, row.id)
            appended = await self._appended(ref)
            at, logged = self._image_mark.setdefault(branch_id, (time.monotonic(), appended))
            due = (
                time.monotonic() - at >= self.settings.base_image_interval
                or appended - logged >= self.settings.base_image_log_bytes
                or not await self._has_image(ref)
            )
            if due and time.monotonic() >= self._image_retry_at.get(branch_id, 0.0):
                try:
                    await self.hot_image(
                        endpoint_id, branch_id, TimelineRef(row.project_id, row.id)
                    )
                except SelkieError as exc:
                    # A compute stopping meanwhile, say: try again in a while.
                    self._image_retry_at[branch_id] = time.monotonic() + HOT_IMAGE_RETRY
                    log.warning("hot base image of %s failed: %s", branch_id, exc.message)

    async def _has_image(self, ref: TimelineRef) -> bool:
        """Whether the timeline has a base image (a timeline begun on a Kubernetes claim
        has none until its first hot copy: until then it cannot be restored)."""
        if ref.timeline_id in self._imaged or self.local is not None:
            return True
        if await list_images(self.archive, ref):
            self._imaged.add(ref.timeline_id)
            return True
        return False

    async def _appended(self, ref: TimelineRef) -> int:
        """Log bytes the safekeeper appended to the timeline since it opened it (0 when it
        cannot say: a remote safekeeper not answering)."""
        try:
            return await self.safekeeper.appended_bytes(ref)
        except SelkieError as exc:
            log.warning("timeline %s: %s", ref.timeline_id, exc.message)
            return 0

    async def hot_image(self, endpoint_id: str, branch_id: str, ref: TimelineRef) -> int:
        """A base image of a running compute; returns its position."""
        info = await self.driver.inspect(endpoint_id)
        if not info.running:
            return -1
        staging = self.places.staging_dir(branch_id)
        try:
            seq = await self.places.hot_copy_of(endpoint_id, info, staging)
            await self.make_image(branch_id, ref, seq, kind=HOT, datadir=staging)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return seq

    async def prune(self, now: datetime | None = None) -> int:
        """History past each project's window (see :class:`Retention`); objects deleted."""
        deleted = await self.retention.prune(now or self.clock())
        self.metrics.pruned_objects += deleted
        return deleted

    async def project_bytes(self) -> dict[str, int]:
        return await self.retention.project_bytes()
