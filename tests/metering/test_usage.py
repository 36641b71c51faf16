"""Usage: events written with transitions, intervals and periods computed from them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from selkie.errors import InvalidInput
from selkie.metering.usage import MAX_PERIODS, Event, intervals, per_period, period_starts
from selkie.model import Principal
from selkie.platform import Platform
from selkie.store.tables import UsageEventRow

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def ev(kind: str, seconds: float, gen: int, cu: float = 0.5, ep: str = "ep-a") -> Event:
    return Event(ep, "p", kind, T0 + timedelta(seconds=seconds), cu, gen)


def test_intervals_and_periods_exact() -> None:
    events = [
        ev("start", 10, 1),
        ev("stop", 70, 2),
        ev("start", 3590, 3),
        ev("stop", 3650, 4),
        ev("start", 7200, 5, cu=2),
    ]
    spans = intervals(events, now=T0 + timedelta(seconds=7260))
    assert [(s.start - T0).total_seconds() for s in spans] == [10, 3590, 7200]
    assert [(s.end - T0).total_seconds() for s in spans] == [70, 3650, 7260]  # last one open
    hours = per_period(spans, T0, T0 + timedelta(hours=3), "hourly")
    assert [(h.active_time_seconds, h.compute_time_seconds) for h in hours] == [
        (70.0, 35.0),  # 60 s + 10 s of the interval crossing the hour
        (50.0, 25.0),
        (60.0, 120.0),  # 2 CU
    ]
    again = per_period(
        intervals(list(reversed(events)), T0 + timedelta(seconds=7260)),
        T0,
        T0 + timedelta(hours=3),
        "hourly",
    )
    assert again == hours  # aggregation is a pure function: re-running never double counts
    (day,) = per_period(spans, T0, T0 + timedelta(days=1), "daily")
    assert (day.active_time_seconds, day.compute_time_seconds) == (180.0, 180.0)


def test_resizes_bill_each_stretch_at_its_size() -> None:
    # 0.25 CU for 60 s, then 2 CU for 10 s: 35 CU-s in 70 s of activity.
    events = [
        ev("start", 0, 1, cu=0.25),
        ev("resize", 60, 1, cu=2),
        ev("stop", 70, 2, cu=2),
    ]
    spans = intervals(events, now=T0 + timedelta(seconds=100))
    assert [(s.cu, (s.end - s.start).total_seconds()) for s in spans] == [(0.25, 60), (2, 10)]
    (day,) = per_period(spans, T0, T0 + timedelta(days=1), "daily")
    assert (day.active_time_seconds, day.compute_time_seconds) == (70.0, 35.0)
    # Still running: the open stretch runs at the last size until now.
    (day,) = per_period(
        intervals(events[:2], now=T0 + timedelta(seconds=70)), T0, T0 + timedelta(days=1), "daily"
    )
    assert day.compute_time_seconds == 35.0


async def test_measured_active_periods(platform: Platform, who: Principal) -> None:
    created = await asyncio.to_thread(
        platform.control.projects.create,
        who,
        name="metered",
        default_endpoint_settings={
            "autoscaling_limit_min_cu": 0.5,
            "autoscaling_limit_max_cu": 0.5,
        },
    )
    ep = created.endpoints[0].id
    t_start = datetime.now(UTC) - timedelta(seconds=1)
    measured = 0.0
    for hold in (1.2, 0.6, 0.9):
        await platform.lifecycle.start(ep)
        t = time.monotonic()
        await asyncio.sleep(hold)
        await platform.lifecycle.suspend(ep)
        measured += time.monotonic() - t
    with platform.store.read() as s:
        kinds = [
            r.kind
            for r in s.execute(
                select(UsageEventRow)
                .where(UsageEventRow.endpoint_id == ep)
                .order_by(UsageEventRow.id)
            ).scalars()
        ]
    assert kinds == ["start", "stop"] * 3
    rows = await asyncio.to_thread(
        platform.control.consumption.history,
        who,
        start=t_start,
        end=datetime.now(UTC) + timedelta(seconds=1),
        granularity="daily",
        project_ids=[created.project.id],
    )
    ((pid, periods),) = rows
    active = sum(p.active_time_seconds for p in periods)
    compute = sum(p.compute_time_seconds for p in periods)
    assert pid == created.project.id
    assert abs(active - measured) < 1.0, (active, measured)
    assert abs(compute - active * 0.5) < 0.01


async def test_consumption_api_shape_and_validation(platform: Platform, who: Principal) -> None:
    from fastapi.testclient import TestClient

    from selkie.api.app import create_app

    created = await asyncio.to_thread(platform.control.projects.create, who, name="api")
    await platform.lifecycle.start(created.endpoints[0].id)
    await asyncio.sleep(0.3)
    _, key = await asyncio.to_thread(platform.control.api_keys.create, who, name="usage")
    api = TestClient(create_app(platform.control), headers={"Authorization": f"Bearer {key}"})
    now = datetime.now(UTC)
    params = {
        "from": (now - timedelta(hours=2)).isoformat(),
        "to": (now + timedelta(hours=1)).isoformat(),
        "granularity": "hourly",
    }
    body = api.get("/v1/consumption_history/projects", params=params).json()
    (project,) = [p for p in body["projects"] if p["project_id"] == created.project.id]
    assert len(project["consumption"]) in (3, 4)
    total = sum(c["active_time_seconds"] for c in project["consumption"])
    assert 0.2 < total < 30  # the open interval counts up to now
    month = api.get(f"/v1/projects/{created.project.id}/usage").json()
    assert month["project_id"] == created.project.id
    assert 0.2 < month["active_time_seconds"] < 30
    assert (
        month["compute_time_seconds"] == round(month["active_time_seconds"] * 0.25, 3)
        or abs(month["compute_time_seconds"] - month["active_time_seconds"] * 0.25) < 0.01
    )
    bad = api.get("/v1/consumption_history/projects", params={**params, "granularity": "weekly"})
    assert bad.status_code == 422
    backwards = api.get("/v1/consumption_history/projects", params={**params, "to": params["from"]})
    assert backwards.status_code == 422


def test_ranges_are_capped_per_granularity() -> None:
    assert len(period_starts(T0, T0 + timedelta(days=31), "hourly")) == MAX_PERIODS["hourly"]
    with pytest.raises(InvalidInput, match="at most 744 hourly periods"):
        period_starts(T0, T0 + timedelta(days=32), "hourly")
    with pytest.raises(InvalidInput, match="at most 120 monthly"):
        period_starts(T0, T0 + timedelta(days=3700), "monthly")
    # The cost follows the rows: a year of daily periods over many spans is quick, exact.
    spans = intervals(
        [ev("start", i * 7200, 2 * i + 1) for i in range(2000)]
        + [ev("stop", i * 7200 + 60, 2 * i + 2) for i in range(2000)],
        now=T0 + timedelta(days=400),
    )
    days = per_period(spans, T0, T0 + timedelta(days=365), "daily")
    assert sum(d.active_time_seconds for d in days) == 2000 * 60
