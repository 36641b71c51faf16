"""When a compute's next EVENT is due, from the rows information_schema.EVENTS gives (in
UTC), without a server: one-time and recurring events, their ends and last runs, calendar
months, composite intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from selkie.compute.events import interval, next_due, next_run

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def naive(t: datetime) -> datetime:
    return t.replace(tzinfo=None)  # as PyMySQL returns DATETIME columns


def test_one_time_events() -> None:
    soon = NOW + timedelta(seconds=30)
    assert next_run(("ONE TIME", naive(soon), None, None, None, None, None), NOW) == soon
    past = NOW - timedelta(minutes=5)
    assert next_run(("ONE TIME", naive(past), None, None, None, None, None), NOW) is None


def test_recurring_events_from_their_start() -> None:
    start = NOW - timedelta(minutes=25)
    row = ("RECURRING", None, "10", "MINUTE", naive(start), None, None)
    assert next_run(row, NOW) == NOW + timedelta(minutes=5)
    # Not started yet: its first run is its start.
    later = NOW + timedelta(hours=1)
    assert next_run(("RECURRING", None, "10", "MINUTE", naive(later), None, None), NOW) == later
    # Past its end: none.
    ended = ("RECURRING", None, "10", "MINUTE", naive(start), naive(NOW), None)
    assert next_run(ended, NOW) is None
    # Exactly on a run: the next one, not this instant.
    on = ("RECURRING", None, "1", "HOUR", naive(NOW - timedelta(hours=2)), None, None)
    assert next_run(on, NOW) == NOW + timedelta(hours=1)


def test_calendar_months_and_composite_intervals() -> None:
    jan31 = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
    monthly = ("RECURRING", None, "1", "MONTH", naive(jan31), None, None)
    assert next_run(monthly, datetime(2026, 2, 1, tzinfo=UTC)) == datetime(
        2026, 2, 28, 9, 0, tzinfo=UTC
    )
    assert next_run(monthly, NOW) == datetime(2026, 12, 31, 9, 0, tzinfo=UTC)
    assert interval("1 02", "DAY_HOUR") == timedelta(days=1, hours=2)
    assert interval("1-2", "YEAR_MONTH") == 14
    assert interval("2", "QUARTER") == 6
    assert interval("x", "DAY") is None and interval("5", "MICROSECOND") is None


def test_the_earliest_of_several() -> None:
    rows = [
        ("RECURRING", None, "1", "DAY", naive(NOW - timedelta(hours=1)), None, None),
        ("ONE TIME", naive(NOW + timedelta(minutes=2)), None, None, None, None, None),
        ("ONE TIME", naive(NOW - timedelta(minutes=2)), None, None, None, None, None),
    ]
    assert next_due(rows, NOW) == NOW + timedelta(minutes=2)
    assert next_due([], NOW) is None
