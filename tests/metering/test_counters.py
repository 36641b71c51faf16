"""Hourly counters: readings counted once, storage billed by the second, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from selkie.metering import counters
from selkie.metering.usage import usage_between
from selkie.store import Store
from selkie.store.tables import MeterMarkRow, UsageHourRow

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


def _reading(store: Store, reading: int, run: datetime, at: datetime) -> int:
    with store.write() as s:
        return counters.count_reading(
            s,
            key="written:ep-a",
            reading=reading,
            run=run,
            project_id="p",
            subject_id="ep-a",
            metric=counters.WRITTEN,
            at=at,
        )


def _hours(store: Store, metric: str) -> dict[datetime, int]:
    with store.read() as s:
        rows = s.execute(select(UsageHourRow).where(UsageHourRow.metric == metric)).scalars()
        return {r.hour: r.value for r in rows}


def test_readings_count_once(store: Store) -> None:
    run1, run2 = T0, T0 + timedelta(hours=1)
    assert _reading(store, 100, run1, T0 + timedelta(minutes=1)) == 100
    assert _reading(store, 100, run1, T0 + timedelta(minutes=2)) == 0  # the same reading again
    assert _reading(store, 150, run1, T0 + timedelta(minutes=3)) == 50
    assert _reading(store, 120, run1, T0 + timedelta(minutes=4)) == 0  # late: no going back
    assert _reading(store, 160, run1, T0 + timedelta(minutes=70)) == 10  # into the next hour
    assert _reading(store, 30, run2, T0 + timedelta(minutes=71)) == 30  # a new run from zero
    assert _reading(store, 170, run1, T0 + timedelta(minutes=72)) == 0  # the old run, too late
    assert _hours(store, counters.WRITTEN) == {T0: 150, T0 + timedelta(hours=1): 40}


def test_a_run_is_known_to_within_the_jitter(store: Store) -> None:
    boot = T0 + timedelta(seconds=30)

    def reading(value: int, run: datetime) -> int:
        with store.write() as s:
            return counters.count_reading(
                s,
                key="written:ep-b:run-1",
                reading=value,
                run=run,
                same_run_within=timedelta(seconds=2),
                project_id="p",
                subject_id="ep-b",
                metric=counters.WRITTEN,
                at=T0 + timedelta(minutes=5),
            )

    assert reading(100, boot) == 100
    assert reading(150, boot + timedelta(seconds=1)) == 50  # now - uptime, rounded: same run
    assert reading(140, boot - timedelta(seconds=1)) == 0  # late, same run
    assert reading(20, boot + timedelta(seconds=40)) == 20  # the server restarted by itself
    assert reading(170, boot) == 0  # the earlier run, too late


def test_storage_is_billed_by_the_second_until_deletion(store: Store) -> None:
    created = T0 - timedelta(minutes=30)

    def sample(size: int | None, at: datetime) -> None:
        with store.write() as s:
            counters.count_storage(
                s, branch_id="br-a", project_id="p", size=size, at=at, since=created
            )

    sample(1000, T0 + timedelta(minutes=60))  # first sight: 1000 bytes since creation
    sample(1000, T0 + timedelta(minutes=60))  # the same instant again: nothing more
    sample(4000, T0 + timedelta(minutes=90))
    sample(None, T0 + timedelta(minutes=150))  # deleted: 4000 bytes for its last hour
    sample(None, T0 + timedelta(minutes=200))  # and nothing after
    assert _hours(store, counters.STORAGE) == {
        T0 - timedelta(hours=1): 1000 * 1800,
        T0: 1000 * 3600,
        T0 + timedelta(hours=1): 1000 * 1800 + 4000 * 1800,
        T0 + timedelta(hours=2): 4000 * 1800,
    }
    with store.read() as s:
        assert s.get(MeterMarkRow, "storage:br-a") is None
    usage = usage_between(
        store, ["p"], T0 - timedelta(hours=1), T0 + timedelta(hours=4), "hourly", T0
    )["p"]
    assert [u.data_storage_bytes_hour for u in usage] == [500.0, 1000.0, 2500.0, 2000.0, 0.0]
    (day,) = usage_between(
        store, ["p"], T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1), "daily", T0
    )["p"]
    assert day.data_storage_bytes_hour == 6000.0  # 1000 B x 2 h + 4000 B x 1 h


def test_split_by_hour() -> None:
    pieces = list(
        counters.split_by_hour(T0 - timedelta(seconds=10), T0 + timedelta(hours=1, seconds=5))
    )
    assert pieces == [
        (T0 - timedelta(hours=1), 10.0),
        (T0, 3600.0),
        (T0 + timedelta(hours=1), 5.0),
    ]
