"""Points in a branch's history (a time or a GTID position): parsing, validation against
the history window, and the timeline that held the branch's data at a point."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from selkie import model
from selkie.archive.binlog import DOMAIN, Gtid
from selkie.errors import Conflict, InvalidInput, NotFound
from selkie.storage.restore import Target
from selkie.store import convert
from selkie.store.tables import BranchRow, ProjectRow, TimelineRow

# Where the history cannot reach the branches' data (neither local datadirs nor claims).
NO_IMAGES = (
    "restores and point-in-time branches need the branches' data within the history's "
    "reach (local datadirs or Kubernetes claims), which this storage is not"
)


@dataclass(frozen=True)
class Point:
    """A validated restore target: a time, or a GTID sequence number."""

    at: datetime | None = None
    seq: int | None = None

    @property
    def target(self) -> Target:
        until_us = int(self.at.timestamp() * 1_000_000) if self.at is not None else None
        return Target(until_us=until_us, until_seq=self.seq)

    def payload(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() if self.at is not None else None,
            "seq": self.seq,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Point:
        at = data.get("at")
        return cls(at=datetime.fromisoformat(at) if at else None, seq=data.get("seq"))


def parse_lsn(value: str, name: str) -> int:
    """A GTID position (``0-1-1234``) to its sequence number; 422 when it is not one."""
    try:
        gtid = Gtid.parse(value)
    except ValueError as exc:
        raise InvalidInput(f"{name}: {exc}") from exc
    if gtid.domain != DOMAIN:
        raise InvalidInput(f"{name}: computes write GTID domain {DOMAIN}; got {value!r}")
    return gtid.seq


def check_point(
    s: Session,
    *,
    settings_archive: bool,
    project: ProjectRow,
    branch: BranchRow,
    at: datetime | None,
    lsn: str | None,
    names: tuple[str, str],
    now: datetime,
) -> Point:
    """Validate a point in ``branch``'s history (``names``: the request's field names for
    the time and the position)."""
    if at is not None and lsn is not None:
        raise InvalidInput(f"give {names[0]} or {names[1]}, not both")
    if not settings_archive:
        raise Conflict("point-in-time restore needs the archive, which is off (archive_url)")
    if branch.timeline_id is None:
        raise Conflict(f"branch {branch.id} has no data yet; start it first")
    settings = convert.project_settings(project.settings)
    if settings.storage_mode is not model.StorageMode.LOCAL:
        raise Conflict("point-in-time restore needs local storage")
    if at is not None:
        if at.tzinfo is None:
            raise InvalidInput(f"{names[0]} needs a timezone (e.g. 2026-12-01T14:02:00Z)")
        start = max(now - timedelta(seconds=settings.history_retention_seconds), branch.created_at)
        if not start <= at <= now:
            raise InvalidInput(
                f"{names[0]} {at.isoformat()} is outside the history of branch {branch.id}: "
                f"{start.isoformat()} to {now.isoformat()} "
                f"(history_retention_seconds={settings.history_retention_seconds})"
            )
        return Point(at=at)
    if lsn is not None:
        seq = parse_lsn(lsn, names[1])
        row = s.get(TimelineRow, branch.timeline_id) if branch.timeline_id else None
        if row is None:
            raise InvalidInput(f"branch {branch.id} has no history yet")
        oldest = row
        while oldest.previous_timeline_id is not None:
            prev = s.get(TimelineRow, oldest.previous_timeline_id)
            if prev is None:
                break
            oldest = prev
        if seq < oldest.start_seq:
            raise InvalidInput(
                f"{names[1]} {lsn} is before the history of branch {branch.id}, which "
                f"starts at 0-1-{oldest.start_seq}"
            )
        return Point(seq=seq)
    return Point()


def timeline_at(s: Session, branch_id: str, point: Point) -> TimelineRow:
    """The timeline that held the branch's data at the point: its current one, or one a
    restore replaced."""
    branch = s.get(BranchRow, branch_id)
    row = s.get(TimelineRow, branch.timeline_id) if branch and branch.timeline_id else None
    if row is None:
        raise NotFound(f"branch {branch_id} has no history")
    while True:
        too_new = (point.at is not None and row.created_at > point.at) or (
            point.seq is not None and row.start_seq > point.seq
        )
        if not too_new or row.previous_timeline_id is None:
            return row
        prev = s.get(TimelineRow, row.previous_timeline_id)
        if prev is None:
            return row
        row = prev


def switch_timeline(
    s: Session,
    branch: BranchRow,
    *,
    timeline_id: str,
    start_seq: int,
    parent: tuple[str, int] | None,
    now: datetime,
    end_previous: bool = True,
) -> TimelineRow:
    """Make a new timeline the branch's current one (in the caller's transaction). The one
    it replaces ends, unless ``end_previous`` is false (another branch carries it on)."""
    previous = branch.timeline_id
    if previous is not None and end_previous:
        old = s.get(TimelineRow, previous)
        if old is not None and old.ended_at is None:
            old.ended_at = now
    row = TimelineRow(
        id=timeline_id,
        project_id=branch.project_id,
        branch_id=branch.id,
        start_seq=start_seq,
        last_seq=start_seq,
        parent_timeline_id=parent[0] if parent else None,
        parent_seq=parent[1] if parent else None,
        previous_timeline_id=previous,
        created_at=now,
    )
    s.add(row)
    branch.timeline_id = row.id
    branch.updated_at = now
    s.flush()
    return row
