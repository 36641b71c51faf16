"""Compute usage from usage events: active intervals per endpoint, summed per period.

Pure functions over the events (start/stop pairs in generation order), so aggregating again
gives the same numbers: nothing is stored by aggregation, nothing can count twice. An
interval still open is counted up to ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from selkie.errors import InvalidInput
from selkie.store import Store
from selkie.store.tables import UsageEventRow

GRANULARITIES = ("hourly", "daily", "monthly")


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
class PeriodUsage:
    timeframe_start: datetime
    timeframe_end: datetime
    active_time_seconds: float
    compute_time_seconds: float  # CU-seconds


def intervals(events: Iterable[Event], now: datetime) -> list[Interval]:
    """Pair each endpoint's starts with the stops that follow them."""
    out = []
    open_: dict[str, Event] = {}
    for e in sorted(events, key=lambda e: (e.endpoint_id, e.generation, e.at)):
        if e.kind == "start":
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
            nxt = (cur.replace(day=28) + timedelta(days=4)).replace(day=1)
        if nxt >= end:
            return out
        out.append(nxt)
        if len(out) > 10_000:
            raise InvalidInput("too many periods; use a coarser granularity")


def per_period(
    spans: list[Interval], start: datetime, end: datetime, granularity: str
) -> list[PeriodUsage]:
    starts = period_starts(start, end, granularity)
    bounds = [*starts[1:], end]
    out = []
    for lo, hi in zip(starts, bounds, strict=True):
        lo_c, hi_c = max(lo, start), min(hi, end)
        active = compute = 0.0
        for iv in spans:
            overlap = (min(iv.end, hi_c) - max(iv.start, lo_c)).total_seconds()
            if overlap > 0:
                active += overlap
                compute += overlap * iv.cu
        out.append(PeriodUsage(lo, hi, round(active, 3), round(compute, 3)))
    return out


def load_events(store: Store, project_ids: list[str], until: datetime) -> list[Event]:
    with store.read() as s:
        rows = s.execute(
            select(UsageEventRow)
            .where(UsageEventRow.project_id.in_(project_ids))
            .where(UsageEventRow.at <= until)
        ).scalars()
        return [Event(r.endpoint_id, r.project_id, r.kind, r.at, r.cu, r.generation) for r in rows]
