"""Hourly usage counters and the marks that keep them exact.

Transfer, written data and storage arrive as readings of counters that only their source
knows: a proxy's bytes sent to clients since it started, a compute's redo-log bytes since
it started, a branch's size now. Each reading is turned into an increment against a mark
(what has been counted so far, stored per source) and the increment is added to the hour's
row, mark and row in one transaction. A reading seen twice adds nothing the second time; a
reading lost is caught up by the next one from the same source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from selkie.store.tables import BranchRow, MeterMarkRow, UsageHourRow

TRANSFER = "transfer"  # bytes the proxy sent to clients, per endpoint
WRITTEN = "written"  # bytes a compute wrote to its redo log, per endpoint
STORAGE = "storage"  # byte-seconds a branch occupied, per branch
HISTORY = "history"  # byte-seconds a project's restore history occupied in the archive
METRICS = (TRANSFER, WRITTEN, STORAGE, HISTORY)


def storage_key(branch_id: str) -> str:
    """The mark holding a branch's last sampled size (and when it was sampled)."""
    return f"storage:{branch_id}"


def history_key(project_id: str) -> str:
    """The mark holding a project's last sampled archive size."""
    return f"history:{project_id}"


def storage_mark_of_branch() -> ColumnElement[bool]:
    """Joins a branch to its storage mark, in SQL."""
    return MeterMarkRow.key == "storage:" + BranchRow.id


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def split_by_hour(start: datetime, end: datetime) -> Iterator[tuple[datetime, float]]:
    """The hours [start, end) touches, with the seconds of it in each."""
    cur = start
    while cur < end:
        nxt = min(hour_of(cur) + timedelta(hours=1), end)
        yield hour_of(cur), (nxt - cur).total_seconds()
        cur = nxt


def add(
    s: Session, *, project_id: str, subject_id: str, metric: str, hour: datetime, value: int
) -> None:
    """Add ``value`` to the hour's counter (an atomic upsert on both backends)."""
    if value <= 0:
        return
    insert: Any
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(UsageHourRow).values(
        project_id=project_id, subject_id=subject_id, metric=metric, hour=hour, value=value
    )
    s.execute(
        stmt.on_conflict_do_update(
            index_elements=["subject_id", "metric", "hour"],
            set_={"value": UsageHourRow.value + stmt.excluded.value},
        )
    )


@dataclass(frozen=True)
class Mark:
    value: int
    at: datetime


def get_mark(s: Session, key: str) -> Mark | None:
    """The mark, locked for this transaction (SQLite write blocks hold the database lock)."""
    row = s.get(MeterMarkRow, key, with_for_update=True)
    return None if row is None else Mark(row.value, row.at)


def set_mark(s: Session, key: str, value: int, at: datetime) -> None:
    row = s.get(MeterMarkRow, key)
    if row is None:
        s.add(MeterMarkRow(key=key, value=value, at=at))
    else:
        row.value, row.at = value, at


def count_reading(
    s: Session,
    *,
    key: str,
    reading: int,
    run: datetime,
    project_id: str,
    subject_id: str,
    metric: str,
    at: datetime,
    same_run_within: timedelta = timedelta(0),
) -> int:
    """Count a cumulative counter's reading (which restarts from zero with each ``run`` of
    its source, ``run`` being when that began, known to within ``same_run_within``): add
    what it grew since the mark, move the mark; returns the increment. An older reading
    (or run) arriving late adds nothing and does not move the mark back."""
    mark = get_mark(s, key)
    if mark is not None and abs(mark.at - run) <= same_run_within:
        run = mark.at  # the same run
    elif mark is not None and mark.at > run:
        return 0  # a reading of an earlier run, arriving after the next run was counted
    delta = reading if mark is None or mark.at < run else reading - mark.value
    if delta <= 0:
        return 0
    add(
        s,
        project_id=project_id,
        subject_id=subject_id,
        metric=metric,
        hour=hour_of(at),
        value=delta,
    )
    set_mark(s, key, reading, run)
    return delta


def count_storage(
    s: Session,
    *,
    branch_id: str,
    project_id: str,
    size: int | None,
    at: datetime,
    since: datetime,
) -> None:
    """Bill the branch's previous size for the time since it was sampled (since ``since``,
    its creation, when never sampled), then remember ``size`` (None: the branch is gone)."""
    count_level(
        s,
        key=storage_key(branch_id),
        subject_id=branch_id,
        project_id=project_id,
        metric=STORAGE,
        size=size,
        at=at,
        since=since,
    )


def count_level(
    s: Session,
    *,
    key: str,
    subject_id: str,
    project_id: str,
    metric: str,
    size: int | None,
    at: datetime,
    since: datetime,
) -> None:
    """Bill a level (bytes held) over time: its previous value for the time since it was
    sampled (since ``since`` when never), then remember ``size`` (None: gone)."""
    mark = get_mark(s, key)
    start, held = (since, size or 0) if mark is None else (mark.at, mark.value)
    if at > start and held > 0:
        for hour, seconds in split_by_hour(start, at):
            add(
                s,
                project_id=project_id,
                subject_id=subject_id,
                metric=metric,
                hour=hour,
                value=round(held * seconds),
            )
    if size is None:
        if mark is not None:
            s.delete(s.get(MeterMarkRow, key))
    else:
        set_mark(s, key, size, max(at, start))
