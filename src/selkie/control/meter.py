"""The meter: samples what only the computes and the disks know, and enforces quotas.

Every ``interval`` (the scheduler's leader runs it) it
- reads each active compute's ``Innodb_os_log_written`` (redo bytes since the compute
  started) and counts its growth as written data; a suspend takes a last reading just
  before the compute stops, so only a compute that dies unasked loses up to an interval;
- measures each branch's storage and bills its previous size for the time since the last
  sample (byte-seconds per hour); a deleted branch is billed up to its deletion;
- suspends the active endpoints of projects over their compute-time quota (the next wake
  is then refused with the reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from selkie import model
from selkie.compute.base import ComputeDriver
from selkie.errors import SelkieError
from selkie.metering import counters
from selkie.model import EndpointState, utcnow
from selkie.storage.base import Storages
from selkie.store import Store, convert
from selkie.store.store import write_in_thread
from selkie.store.tables import BranchRow, EndpointRow, MeterMarkRow, ProjectRow

log = logging.getLogger(__name__)
# How far apart two readings of one server's start time (now - uptime, in whole seconds)
# may be and still mean the same server run.
BOOT_JITTER = timedelta(seconds=2)
# How long the mark of a finished compute run is kept.
MARK_RETENTION = timedelta(hours=1)

# The redo bytes written since the server started, and when it started (so a server that
# restarted on its own, a container restart say, is a new run counted from zero).
WRITTEN_PROBE = (
    "SELECT (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'INNODB_OS_LOG_WRITTEN'), "
    "UNIX_TIMESTAMP() - (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'UPTIME')",
)
# Storage is billed from a branch's creation, or from when this installation began to
# meter storage, whichever is later (an upgrade does not bill the past).
METERING_SINCE = "storage_metering_since"


def written_key(endpoint_id: str, started_at: datetime) -> str:
    """The mark of one compute start's written data."""
    return f"written:{endpoint_id}:{started_at.isoformat()}"


@dataclass(frozen=True)
class _Running:
    endpoint_id: str
    project_id: str
    started_at: datetime


@dataclass(frozen=True)
class _Branch:
    branch_id: str
    project_id: str
    parent_id: str | None
    created_at: datetime
    deleted_at: datetime | None
    settings: model.ProjectSettings


class Meter:
    def __init__(
        self,
        *,
        store: Store,
        driver: ComputeDriver,
        storages: Storages,
        interval: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
        history_sizes: Callable[[], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.storages = storages
        self.interval = interval
        self.clock = clock
        # What each project's restore history occupies in the archive (None: no archive).
        self.history_sizes = history_sizes
        self._history_seen: set[str] = set()
        self._last: datetime | None = None
        self._since: datetime | None = None

    async def tick(self, now: datetime) -> None:
        """Sample, if an interval has passed since the last time. Each step runs even when
        another fails."""
        if self._last is not None and (now - self._last).total_seconds() < self.interval:
            return
        self._last = now
        steps = (
            self.sample_all_written,
            self.sample_storage,
            self.sample_history,
            self.tidy,
        )
        for step in steps:
            try:
                await step(now)
            except Exception:
                log.exception("meter: %s failed; going on", step.__name__)

    # --- written data ----------------------------------------------------------------------

    def _running(self, endpoint_ids: list[str] | None = None) -> list[_Running]:
        with self.store.read() as s:
            stmt = select(EndpointRow).where(
                EndpointRow.current_state.in_(
                    [EndpointState.ACTIVE.value, EndpointState.SUSPENDING.value]
                )
            )
            if endpoint_ids is not None:
                stmt = stmt.where(EndpointRow.id.in_(endpoint_ids))
            return [
                _Running(r.id, r.project_id, r.started_at)
                for r in s.execute(stmt).scalars()
                if r.started_at is not None
            ]

    async def sample_written(self, endpoint_id: str) -> int:
        """Count the compute's redo bytes written since the last reading; returns them.
        Never raises: a compute that cannot be asked is sampled next time."""
        try:
            (run,) = await asyncio.to_thread(self._running, [endpoint_id])
        except ValueError:
            return 0
        try:
            ((row,),) = await self.driver.execute(endpoint_id, WRITTEN_PROBE)
            reading = int(row[0])
            booted = datetime.fromtimestamp(int(row[1]), UTC)
        except Exception as exc:
            log.debug("cannot read written data of %s: %s", endpoint_id, exc)
            return 0

        try:
            return await write_in_thread(self._count_written, run, reading, booted)
        except SelkieError as exc:
            log.warning("cannot count written data of %s: %s", endpoint_id, exc.message)
            return 0

    def _count_written(self, run: _Running, reading: int, booted: datetime) -> int:
        with self.store.write() as s:
            return counters.count_reading(
                s,
                # One mark per compute start: a suspend and resume within the jitter below
                # are still two runs.
                key=written_key(run.endpoint_id, run.started_at),
                reading=reading,
                run=booted,
                same_run_within=BOOT_JITTER,
                project_id=run.project_id,
                subject_id=run.endpoint_id,
                metric=counters.WRITTEN,
                at=self.clock(),
            )

    async def sample_all_written(self, now: datetime | None = None) -> None:
        for r in await asyncio.to_thread(self._running):
            try:
                if (await self.driver.inspect(r.endpoint_id)).running:
                    await self.sample_written(r.endpoint_id)
            except Exception as exc:
                log.warning("meter: cannot sample %s: %r", r.endpoint_id, exc)

    # --- storage ---------------------------------------------------------------------------

    def _branches(self) -> list[_Branch]:
        """Live branches, and deleted ones still holding a storage mark."""
        with self.store.read() as s:
            marked = select(MeterMarkRow.key).where(counters.storage_mark_of_branch())
            rows = s.execute(
                select(BranchRow, ProjectRow.settings)
                .join(ProjectRow, ProjectRow.id == BranchRow.project_id)
                .where(BranchRow.deleted_at.is_(None) | marked.exists())
            ).all()
            return [
                _Branch(
                    b.id,
                    b.project_id,
                    b.parent_id,
                    b.created_at,
                    b.deleted_at,
                    convert.project_settings(settings),
                )
                for b, settings in rows
            ]

    def _metering_since(self, now: datetime) -> datetime:
        value = self.store.get_meta(METERING_SINCE)
        if value is None:
            with self.store.write() as s:
                Store.set_meta(s, METERING_SINCE, now.isoformat())
            return now
        return datetime.fromisoformat(value)

    async def sample_storage(self, now: datetime) -> None:
        if self._since is None:
            self._since = await write_in_thread(self._metering_since, now)
        since = self._since
        for b in await asyncio.to_thread(self._branches):
            size: int | None = None
            logical: int | None = None
            if b.deleted_at is None:
                storage = self.storages.for_settings(b.settings)
                try:
                    logical = await storage.branch_size(b.branch_id)
                    size = await storage.billed_size(
                        b.branch_id, has_parent=b.parent_id is not None
                    )
                except Exception as exc:
                    log.warning("cannot measure branch %s: %s", b.branch_id, exc)
                    continue
                if size is None:
                    continue  # storage kept elsewhere (a page server) and not measured here
            at = now if b.deleted_at is None else min(now, b.deleted_at)
            try:
                await write_in_thread(
                    self._count_storage, b, size, logical, at, max(b.created_at, since)
                )
            except SelkieError as exc:
                log.warning("cannot count storage of %s: %s", b.branch_id, exc.message)

    def _count_storage(
        self, b: _Branch, size: int | None, logical: int | None, at: datetime, since: datetime
    ) -> None:
        with self.store.write() as s:
            counters.count_storage(
                s, branch_id=b.branch_id, project_id=b.project_id, size=size, at=at, since=since
            )
            row = s.get(BranchRow, b.branch_id)
            if row is not None and logical is not None:
                row.logical_size = logical  # the branch object's logical_size

    async def sample_history(self, now: datetime) -> None:
        """Bill each project's restore history (archive bytes) over time."""
        if self.history_sizes is None:
            return
        if self._since is None:
            self._since = await write_in_thread(self._metering_since, now)
        sizes = await self.history_sizes()
        # A project whose history is gone (pruned, deleted) is billed up to now, then ends.
        for project_id in sorted(set(sizes) | self._history_seen):
            size = sizes.get(project_id)
            await write_in_thread(self._count_history, project_id, size, now, self._since)
        self._history_seen = set(sizes)

    def _count_history(
        self, project_id: str, size: int | None, at: datetime, since: datetime
    ) -> None:
        with self.store.write() as s:
            counters.count_level(
                s,
                key=counters.history_key(project_id),
                subject_id=project_id,
                project_id=project_id,
                metric=counters.HISTORY,
                size=size,
                at=at,
                since=since,
            )

    def _tidy(self, now: datetime) -> int:
        """Forget written-data marks of compute runs that are over: the endpoint started
        again since, or is gone, and the mark has not moved for an hour (no reading of that
        run can still be on its way)."""
        with self.store.write() as s:
            marks = s.execute(
                select(MeterMarkRow)
                .where(MeterMarkRow.key.like("written:%"))
                .where(MeterMarkRow.updated_at < now - MARK_RETENTION)
            ).scalars()
            done = 0
            for mark in list(marks):
                _, endpoint_id, started = mark.key.split(":", 2)  # see written_key
                ep = s.get(EndpointRow, endpoint_id)
                current = ep.started_at.isoformat() if ep and ep.started_at else None
                if current != started or ep is None or ep.deleted_at is not None:
                    s.delete(mark)
                    done += 1
            return done

    async def tidy(self, now: datetime) -> None:
        await asyncio.to_thread(self._tidy, now)
