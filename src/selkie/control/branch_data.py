"""A branch's data as its history says it should be: a new branch's datadir and first
timeline (copied from its parent, or from the template with a first base image), a branch
made at a past point of its parent restored from the parent's history, a datadir missing
or stale rebuilt from the archive; and the pieces a restore of a branch is made of
(:mod:`selkie.control.restores`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from selkie import model
from selkie.archive import Archive
from selkie.archive.binlog import domain_seq
from selkie.archive.layout import TimelineRef
from selkie.compute.base import ComputeDriver
from selkie.control.images import HistoryMetrics, Images
from selkie.control.places import Places
from selkie.control.points import Point, parse_lsn, timeline_at
from selkie.control.timelines import Timelines
from selkie.safekeeper.api import SafekeeperApi
from selkie.storage.images import INITIAL
from selkie.storage.local import crash_consistent, datadir_position
from selkie.storage.replay import replay_server
from selkie.storage.restore import Restored, Tail, Target, Tools, restore
from selkie.store import Store
from selkie.store.tables import BranchRow, TimelineRow

log = logging.getLogger(__name__)


class BranchData:
    def __init__(
        self,
        *,
        store: Store,
        archive: Archive,
        safekeeper: SafekeeperApi,
        timelines: Timelines,
        places: Places,
        images: Images,
        driver: ComputeDriver,
        tools: Tools,
        metrics: HistoryMetrics,
    ) -> None:
        self.store = store
        self.archive = archive
        self.safekeeper = safekeeper
        self.timelines = timelines
        self.places = places
        self.images = images
        self.driver = driver
        self.tools = tools
        self.metrics = metrics
        self._branch_locks: dict[str, asyncio.Lock] = {}

    def branch_lock(self, branch_id: str) -> asyncio.Lock:
        return self._branch_locks.setdefault(branch_id, asyncio.Lock())

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
        if self.places.local is None:
            await self._ensure_claim(branch, project, create)
            return
        datadirs = self.places.datadirs
        async with self.branch_lock(branch.id):
            row = await asyncio.to_thread(self.timelines.current, branch.id)
            exists = await asyncio.to_thread(datadirs.branch_exists, branch.id)
            if row is None:
                at_point = branch.parent_timestamp is not None or branch.parent_lsn is not None
                if at_point and branch.parent_id is not None and not exists:
                    await self.branch_from_point(branch, project)
                    return
                if not exists:
                    await create()
                    # A copy of the parent: its first image reads only what changed.
                    await self.images.inherit(branch.id, branch.parent_id)
                await self._first_timeline(branch, project.id)
                return
            if exists and await asyncio.to_thread(datadirs.timeline_of, branch.id) == row.id:
                return
            await self.rebuild(branch.id, row)

    async def _ensure_claim(
        self, branch: BranchRow, project: model.Project, create: Callable[[], Awaitable[None]]
    ) -> None:
        """A branch whose data is a Kubernetes claim: made when it has none yet (at a past
        point of its parent: restored from the parent's history); a branch with history
        whose claim is gone is rebuilt from the archive into a new one."""
        async with self.branch_lock(branch.id):
            row = await asyncio.to_thread(self.timelines.current, branch.id)
            exists = await asyncio.to_thread(self.places.storage.branch_exists, branch.id)
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
        row = await asyncio.to_thread(self.timelines.current, branch_id)
        if row is not None or self.places.local is not None:
            return row
        async with self.branch_lock(branch_id):
            row = await asyncio.to_thread(self.timelines.current, branch_id)
            if row is not None:
                return row
            ((pos,),) = (await self.driver.execute(endpoint_id, ["SELECT @@gtid_binlog_pos"]))[0]
            seq = domain_seq(pos)
            return await asyncio.to_thread(self.timelines.begin_followed, branch_id, seq)

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
        datadir = self.places.datadirs.datadir(branch_id)
        parent = (
            await asyncio.to_thread(self.timelines.current, branch.parent_id)
            if branch.parent_id
            else None
        )
        timeline_id = model.new_id("tl")
        if parent is not None:
            seq = await asyncio.to_thread(datadir_position, datadir)
            await asyncio.to_thread(
                lambda: self.timelines.begin(
                    branch_id,
                    project_id,
                    start_seq=seq,
                    parent=(parent.id, seq),
                    timeline_id=timeline_id,
                    parent_lsn=f"0-1-{seq}" if seq else None,
                )
            )
            await self.places.mark_timeline(datadir, timeline_id)
            return
        if await asyncio.to_thread(crash_consistent, datadir):
            async with replay_server(datadir, self.tools):
                pass
        seq = await asyncio.to_thread(datadir_position, datadir)
        await self.images.make(branch_id, TimelineRef(project_id, timeline_id), seq, kind=INITIAL)
        await asyncio.to_thread(
            lambda: self.timelines.begin(
                branch_id,
                project_id,
                start_seq=seq,
                timeline_id=timeline_id,
                parent_lsn=f"0-1-{seq}" if seq else None,
            )
        )
        await self.places.mark_timeline(datadir, timeline_id)

    # --- restores --------------------------------------------------------------------------

    async def local_tail(self, ref: TimelineRef) -> Tail | None:
        """What this safekeeper holds of the timeline beyond the archive."""
        archived = await self.safekeeper.archived_position(ref)
        return await self.safekeeper.local_tail(ref, archived)

    async def restore(
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
            ancestry=await asyncio.to_thread(self.timelines.ancestry, row),
            tail_of=self.local_tail,
            progress=progress,
        )

    async def restore_into(
        self, source: TimelineRow, point: Point, staging: Path, progress: Callable[[str], None]
    ) -> Restored:
        """The source timeline's data at ``point``, rebuilt in ``staging``, with what this
        safekeeper holds beyond the archive."""
        return await self.restore(source, point.target, staging, progress)

    def _timeline_at(self, branch_id: str, point: Point) -> TimelineRow:
        with self.store.read() as s:
            return timeline_at(s, branch_id, point)

    async def timeline_at(self, branch_id: str, point: Point) -> TimelineRow:
        """The timeline of the branch that holds ``point`` (a NotFound or a Conflict when
        none does)."""
        return await asyncio.to_thread(self._timeline_at, branch_id, point)

    @asynccontextmanager
    async def staging(self, branch_id: str) -> AsyncIterator[Path]:
        """A directory to stage the branch's new data in, removed when the block ends."""
        async with self.places.staging(branch_id) as staging:
            yield staging

    async def image_staged(self, branch_id: str, ref: TimelineRef, seq: int, staging: Path) -> None:
        """Data staged for the branch becomes the first state of timeline ``ref``: its base
        image stored, the datadir marked with the timeline."""
        await self.images.make(branch_id, ref, seq, kind=INITIAL, datadir=staging)
        await self.places.mark_timeline(staging, ref.timeline_id)

    async def swap_in(
        self,
        branch_id: str,
        staging: Path,
        *,
        switch: Callable[[], Awaitable[str | None]],
        like: str | None = None,
    ) -> None:
        """Make staged data the branch's (its computes stopped by the caller): a base image
        being made of the old is abandoned; under the branch's lock, ``switch`` records the
        new timeline and returns the branch the old data goes to (None: it is dropped),
        then the datadirs are swapped."""
        await self.images.before_start(branch_id)
        async with self.branch_lock(branch_id):
            preserved = await switch()
            await self.places.restorable.swap_in(branch_id, staging, old_to=preserved, like=like)

    async def branch_from_point(self, branch: BranchRow, project: model.Project) -> None:
        """Make a new branch's data from its parent's history at the branch's point."""
        assert branch.parent_id is not None
        seq = parse_lsn(branch.parent_lsn, "parent_lsn") if branch.parent_lsn else None
        point = Point(at=branch.parent_timestamp, seq=seq)
        source = await self.timeline_at(branch.parent_id, point)
        started = time.monotonic()
        timeline_id = model.new_id("tl")
        async with self.places.staging(branch.id) as staging:
            restored = await self.restore_into(source, point, staging, lambda _: None)
            # No image: the new timeline's ancestor is the source, at the point restored.
            await self.places.mark_timeline(staging, timeline_id)
            await asyncio.to_thread(
                lambda: self.timelines.begin(
                    branch.id,
                    project.id,
                    start_seq=restored.seq,
                    parent=(source.id, restored.seq),
                    timeline_id=timeline_id,
                    parent_lsn=f"0-1-{restored.seq}",
                )
            )
            await self.places.restorable.swap_in(branch.id, staging, like=branch.parent_id)
        self.images.forget_datadir(branch.id, timeline_id, restored.seq)
        self.metrics.note_restore(time.monotonic() - started)

    async def rebuild(self, branch_id: str, row: TimelineRow) -> None:
        """Restore the branch's datadir from its timeline's history (everything the archive
        and this safekeeper hold), then swap it in."""
        log.warning("rebuilding the data of branch %s from the archive", branch_id)
        started = time.monotonic()
        async with self.places.staging(branch_id) as staging:
            restored = await self.restore(row, Target(), staging)
            await self.places.mark_timeline(staging, row.id)
            await self.places.restorable.swap_in(branch_id, staging)
        await asyncio.to_thread(self.timelines.note_position, row.id, restored.seq)
        self.images.forget_datadir(branch_id, row.id, restored.base_seq)
        self.metrics.note_restore(time.monotonic() - started)
