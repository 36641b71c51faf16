"""When a compute's next scheduled ``EVENT`` is due, read from the server before it is
suspended, so the scheduler can wake it in time.

MariaDB runs events in its own scheduler thread; a suspended compute runs nothing. Before
a suspend the control plane reads the enabled events (:data:`EVENTS_QUERY`, in UTC) and
:func:`next_due` works out the earliest next run: a one-time event's ``EXECUTE_AT``, or for
a recurring one the first ``STARTS + k * interval`` after now (and after its last run),
before its ``ENDS``. Pure functions, tested without a server.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

# Enabled events with the times in UTC (the session's time zone is set first). The event
# scheduler shows recurring events' STARTS and one-time events' EXECUTE_AT as written, in
# the session's zone: the query sets it to UTC.
EVENTS_QUERY = [
    "SET time_zone = '+00:00'",
    "SELECT EVENT_TYPE, EXECUTE_AT, INTERVAL_VALUE, INTERVAL_FIELD, STARTS, ENDS, LAST_EXECUTED"
    " FROM information_schema.EVENTS WHERE STATUS = 'ENABLED'",
]

# Fixed-length interval fields, and how many parts a composite value has.
_SECONDS = {
    "SECOND": 1,
    "MINUTE": 60,
    "HOUR": 3600,
    "DAY": 86400,
    "WEEK": 7 * 86400,
}
_COMPOSITE = {
    "MINUTE_SECOND": (60, 1),
    "HOUR_MINUTE": (3600, 60),
    "HOUR_SECOND": (3600, 60, 1),
    "DAY_HOUR": (86400, 3600),
    "DAY_MINUTE": (86400, 3600, 60),
    "DAY_SECOND": (86400, 3600, 60, 1),
}
_MONTHS = {"MONTH": 1, "QUARTER": 3, "YEAR": 12}


def _utc(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = value.decode() if isinstance(value, bytes) else str(value)
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _add_months(t: datetime, months: int) -> datetime:
    year, month = divmod(t.month - 1 + months, 12)
    year += t.year
    day = min(t.day, calendar.monthrange(year, month + 1)[1])
    return t.replace(year=year, month=month + 1, day=day)


def interval(value: str, field: str) -> timedelta | int | None:
    """An event's interval: a timedelta, or a number of months; None when it is not one
    MariaDB would accept (or a microsecond one, which no suspended compute can keep)."""
    field = field.upper()
    parts = [p for p in value.replace(":", " ").replace("-", " ").split() if p]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        return None
    if field in _SECONDS and len(numbers) == 1:
        return timedelta(seconds=numbers[0] * _SECONDS[field])
    if field in _COMPOSITE and len(numbers) == len(_COMPOSITE[field]):
        units = _COMPOSITE[field]
        return timedelta(seconds=sum(n * s for n, s in zip(numbers, units, strict=True)))
    if field in _MONTHS and len(numbers) == 1:
        return numbers[0] * _MONTHS[field]
    if field == "YEAR_MONTH" and len(numbers) == 2:
        return numbers[0] * 12 + numbers[1]
    return None


def next_run(row: Sequence[object], now: datetime) -> datetime | None:
    """The next time one event (a row of :data:`EVENTS_QUERY`) runs after ``now``."""
    kind, execute_at, value, field, starts, ends, last = row
    if str(kind).upper() == "ONE TIME":
        at = _utc(execute_at)
        return at if at is not None and at > now - timedelta(seconds=1) else None
    every = interval(str(value), str(field)) if value is not None and field else None
    start, end, done = _utc(starts), _utc(ends), _utc(last)
    if every is None or start is None:
        return None
    after = max(now, done) if done is not None else now
    if isinstance(every, timedelta):
        if every <= timedelta(0):
            return None
        k = max(0, math.floor((after - start) / every) + 1) if after >= start else 0
        nxt = start + k * every
    else:
        if every <= 0:
            return None
        k = 0
        nxt = start
        if after >= start:
            k = max(0, (after.year - start.year) * 12 + after.month - start.month) // every
            nxt = _add_months(start, k * every)
            while nxt <= after:
                k += 1
                nxt = _add_months(start, k * every)
    return nxt if end is None or nxt <= end else None


def next_due(rows: Iterable[Sequence[object]], now: datetime) -> datetime | None:
    """The earliest next run of any of the events, or None."""
    runs = [t for row in rows if (t := next_run(row, now)) is not None]
    return min(runs) if runs else None
