"""Usage per period: compute from the usage events, transfer, written data and storage
from the hourly counters (:mod:`selkie.metering.counters`).

Compute time is exact to the second: active intervals per endpoint (start/stop pairs in
generation order), an interval still open counted up to ``now``. The counters have hour
resolution: an hour's count belongs to the period its start lies in. Everything here is a
pure function of what is stored, so aggregating again gives the same numbers: nothing is
stored by aggregation, nothing can count twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from selkie.errors import InvalidInput
from selkie.metering.counters import (
    HISTORY,
    STORAGE,
    TRANSFER,
    WRITTEN,
    storage_mark_of_branch,
)
from selkie.model import ProjectSettings
from selkie.store import Store
from selkie.store.tables import BranchRow, MeterMarkRow, UsageEventRow, UsageHourRow

GRANULARITIES = ("hourly", "daily", "monthly")
# The most periods one question may ask for, per granularity (Neon's limits are of this
# order): an hourly month, a daily year and more, ten years by month.
MAX_PERIODS = {"hourly": 24 * 31, "daily": 366 * 2, "monthly": 120}


@dataclass(frozen=True)
class Event:
    endpoint_id: str
    project_id: str
    kind: str
    at: datetime
    cu: float
    generation: int


@dataclass(frozen=True)
class Interval:
    endpoint_id: str
    project_id: str
    start: datetime
    end: datetime
    cu: float


@dataclass(frozen=True)
class Hour:
    """One hourly counter row."""

    project_id: str
    subject_id: str
    metric: str
    hour: datetime
    value: int


@dataclass(frozen=True)
class PeriodUsage:
    timeframe_start: datetime
    timeframe_end: datetime
    active_time_seconds: float
    compute_time_seconds: float  # CU-seconds
    written_data_bytes: int = 0
    data_transfer_bytes: int = 0
    data_storage_bytes_hour: float = 0.0
    # Restore history kept in the archive (base images and log), Neon's "instant restore".
    instant_restore_bytes_hour: float = 0.0


def intervals(events: Iterable[Event], now: datetime) -> list[Interval]:
    """Pair each endpoint's starts with the stops that follow them; a resize ends one
    interval and begins the next at its new size."""
    out = []
    open_: dict[str, Event] = {}
    for e in sorted(events, key=lambda e: (e.endpoint_id, e.generation, e.at)):
        if e.kind == "start":
            open_[e.endpoint_id] = e
        elif e.kind == "resize" and e.endpoint_id in open_:
            s = open_.pop(e.endpoint_id)
            out.append(Interval(e.endpoint_id, e.project_id, s.at, max(s.at, e.at), s.cu))
            open_[e.endpoint_id] = e
        elif e.kind == "stop" and e.endpoint_id in open_:
            s = open_.pop(e.endpoint_id)
            out.append(Interval(e.endpoint_id, e.project_id, s.at, max(s.at, e.at), s.cu))
    for s in open_.values():
        out.append(Interval(s.endpoint_id, s.project_id, s.at, max(s.at, now), s.cu))
    return out


def period_starts(start: datetime, end: datetime, granularity: str) -> list[datetime]:
    if granularity not in GRANULARITIES:
        raise InvalidInput(f"granularity must be one of {', '.join(GRANULARITIES)}")
    if end <= start:
        raise InvalidInput("'to' must be after 'from'")
    if granularity == "hourly":
        first = start.replace(minute=0, second=0, microsecond=0)
    elif granularity == "daily":
        first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        first = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out = [first]
    while True:
        cur = out[-1]
        if granularity == "hourly":
            nxt = cur + timedelta(hours=1)
        elif granularity == "daily":
            nxt = cur + timedelta(days=1)
        else:
            nxt = next_month(cur)
        if nxt >= end:
            return out
        out.append(nxt)
        if len(out) > MAX_PERIODS[granularity]:
            raise InvalidInput(
                f"at most {MAX_PERIODS[granularity]} {granularity} periods per question; "
                "ask for a shorter range or a coarser granularity"
            )


def per_period(
    spans: list[Interval],
    start: datetime,
    end: datetime,
    granularity: str,
    hours: Iterable[Hour] = (),
) -> list[PeriodUsage]:
    starts = period_starts(start, end, granularity)
    bounds = [*starts[1:], end]
    clipped = [(max(lo, start), min(hi, end)) for lo, hi in zip(starts, bounds, strict=True)]
    active = [0.0] * len(starts)
    compute = [0.0] * len(starts)
    # Each span and each hour visits only the periods it falls in: the cost is that of the
    # rows, not rows times the periods.
    for iv in spans:
        i = max(0, bisect.bisect_right(starts, iv.start) - 1)
        while i < len(clipped) and clipped[i][0] < iv.end:
            lo_c, hi_c = clipped[i]
            overlap = (min(iv.end, hi_c) - max(iv.start, lo_c)).total_seconds()
            if overlap > 0:
                active[i] += overlap
                compute[i] += overlap * iv.cu
            i += 1
    sums = [{TRANSFER: 0, WRITTEN: 0, STORAGE: 0, HISTORY: 0} for _ in starts]
    for h in hours:
        i = bisect.bisect_right(starts, h.hour) - 1
        if i >= 0 and clipped[i][0] <= h.hour < clipped[i][1] and h.metric in sums[i]:
            sums[i][h.metric] += h.value
    out = []
    for i, (lo, hi) in enumerate(zip(starts, bounds, strict=True)):
        out.append(
            PeriodUsage(
                lo,
                hi,
                round(active[i], 3),
                round(compute[i], 3),
                written_data_bytes=sums[i][WRITTEN],
                data_transfer_bytes=sums[i][TRANSFER],
                data_storage_bytes_hour=round(sums[i][STORAGE] / 3600, 3),
                instant_restore_bytes_hour=round(sums[i][HISTORY] / 3600, 3),
            )
        )
    return out


def load_events(
    store: Store, project_ids: list[str], until: datetime, since: datetime | None = None
) -> list[Event]:
    """The events up to ``until``; with ``since``, those after it plus each endpoint's
    last event before it (the start of an interval that spans ``since``)."""
    with store.read() as s:
        stmt = (
            select(UsageEventRow)
            .where(UsageEventRow.project_id.in_(project_ids))
            .where(UsageEventRow.at <= until)
        )
        if since is not None:
            last_before = (
                select(func.max(UsageEventRow.id))
                .where(UsageEventRow.project_id.in_(project_ids))
                .where(UsageEventRow.at < since)
                .group_by(UsageEventRow.endpoint_id)
            )
            stmt = stmt.where((UsageEventRow.at >= since) | UsageEventRow.id.in_(last_before))
        rows = s.execute(stmt).scalars()
        return [Event(r.endpoint_id, r.project_id, r.kind, r.at, r.cu, r.generation) for r in rows]


def load_hours(store: Store, project_ids: list[str], start: datetime, end: datetime) -> list[Hour]:
    """The hourly counters whose hour starts in [start, end)."""
    with store.read() as s:
        rows = s.execute(
            select(UsageHourRow)
            .where(UsageHourRow.project_id.in_(project_ids))
            .where(UsageHourRow.hour >= start.replace(minute=0, second=0, microsecond=0))
            .where(UsageHourRow.hour < end)
        ).scalars()
        return [Hour(r.project_id, r.subject_id, r.metric, r.hour, r.value) for r in rows]


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(at: datetime) -> datetime:
    return (month_start(at).replace(day=28) + timedelta(days=4)).replace(day=1)


def usage_between(
    store: Store,
    project_ids: list[str],
    start: datetime,
    end: datetime,
    granularity: str,
    now: datetime,
) -> dict[str, list[PeriodUsage]]:
    """Usage per project and period for [start, end), counted up to ``now``."""
    until = min(end, now)
    spans = intervals(load_events(store, project_ids, until, since=start), until)
    hours = load_hours(store, project_ids, start, end)
    return {
        pid: per_period(
            [i for i in spans if i.project_id == pid],
            start,
            end,
            granularity,
            [h for h in hours if h.project_id == pid],
        )
        for pid in project_ids
    }


def month_usage(store: Store, project_id: str, now: datetime) -> PeriodUsage:
    """The project's usage in the calendar month (UTC) of ``now``, up to ``now``."""
    start = month_start(now)
    ((period,),) = usage_between(
        store, [project_id], start, next_month(now), "monthly", now
    ).values()
    return period


def storage_by_project(store: Store, project_ids: list[str] | None = None) -> dict[str, int]:
    """What each project's live branches occupied when last sampled (all projects with a
    sample, without ``project_ids``)."""
    with store.read() as s:
        stmt = (
            select(BranchRow.project_id, func.sum(MeterMarkRow.value))
            .join(BranchRow, storage_mark_of_branch())
            .where(BranchRow.deleted_at.is_(None))
            .group_by(BranchRow.project_id)
            .order_by(BranchRow.project_id)
        )
        if project_ids is not None:
            stmt = stmt.where(BranchRow.project_id.in_(project_ids))
        return {pid: int(total or 0) for pid, total in s.execute(stmt).all()}


def storage_bytes(store: Store, project_id: str) -> int:
    return storage_by_project(store, [project_id]).get(project_id, 0)


def compute_quota_exceeded(
    store: Store, project_id: str, limit: int | None, now: datetime
) -> str | None:
    """Why the project's compute time this month stops its computes, or None."""
    if limit is None:
        return None
    used = month_usage(store, project_id, now).compute_time_seconds
    if used < limit:
        return None
    return (
        f"project {project_id} has used its compute time for {now:%B %Y}: "
        f"{used:.0f} of {limit} CU-seconds (compute_time_limit_seconds)"
    )


def quota_exceeded(
    store: Store, project_id: str, settings: ProjectSettings, now: datetime
) -> list[str]:
    """Why the project may not run computes now (empty when it may)."""
    problems = []
    compute = compute_quota_exceeded(store, project_id, settings.compute_time_limit_seconds, now)
    if compute is not None:
        problems.append(compute)
    if settings.storage_limit_bytes is not None:
        size = storage_bytes(store, project_id)
        if size > settings.storage_limit_bytes:
            problems.append(
                f"project {project_id} stores {size} bytes, over its limit of "
                f"{settings.storage_limit_bytes} bytes (storage_limit_bytes)"
            )
    return problems
