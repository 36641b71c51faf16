"""The scheduler's decision, with an injected clock and exact values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from selkie.control.scheduler import Candidate, due

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def cand(ep: str, timeout: int, last: int | None, started: int | None = 0) -> Candidate:
    return Candidate(
        endpoint_id=ep,
        suspend_timeout_seconds=timeout,
        last_active=None if last is None else T0 + timedelta(seconds=last),
        started_at=None if started is None else T0 + timedelta(seconds=started),
    )


def test_suspend_after_exactly_the_timeout() -> None:
    c = [cand("a", 300, last=10)]
    assert due(c, {}, T0 + timedelta(seconds=309.999)) == []
    assert due(c, {}, T0 + timedelta(seconds=310)) == ["a"]


def test_never_and_reported_activity_and_start_time() -> None:
    now = T0 + timedelta(seconds=1000)
    candidates = [
        cand("never", -1, last=0),
        cand("reported", 60, last=0),
        cand("fresh-start", 60, last=None, started=990),
        cand("stale", 60, last=100, started=0),
        cand("no-stamps", 60, last=None, started=None),
    ]
    reported = {"reported": T0 + timedelta(seconds=950)}
    assert due(candidates, reported, now) == ["stale", "no-stamps"]
    later = now + timedelta(seconds=50)
    assert due(candidates, reported, later) == ["reported", "fresh-start", "stale", "no-stamps"]
