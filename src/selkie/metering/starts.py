"""What the lifecycle reports about starts and suspends, and the counters that keep it.

The lifecycle calls a :class:`LifecycleObserver`; :class:`StartMetrics` is the one the
platform gives it, read by ``/metrics``, the benchmarks and the tests.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Protocol

# The histogram of start durations needs recent starts only.
KEEP_START_SECONDS = 10_000
KEEP_RECENT_PER_ENDPOINT = 20


class LifecycleObserver(Protocol):
    def starting(self, endpoint_id: str) -> None:
        """A start began (its compare-and-set to starting won)."""

    def started(self, endpoint_id: str, timings: dict[str, float]) -> None:
        """A start ended with the endpoint active; ``timings`` in milliseconds by phase,
        ``total_ms`` among them."""

    def suspended(self, endpoint_id: str) -> None:
        """A running compute was stopped cleanly."""


class StartMetrics:
    """Counts per endpoint since this process began, recent start durations, and the
    breakdown of each endpoint's last start."""

    def __init__(self) -> None:
        self.start_counts: dict[str, int] = {}
        self.suspend_counts: dict[str, int] = {}
        self.start_seconds: list[float] = []
        self.last_start_timings: dict[str, dict[str, float]] = {}
        # The last few starts of each endpoint: when each ended, and how long it took (ms).
        self.recent: dict[str, deque[tuple[datetime, float]]] = {}

    def starting(self, endpoint_id: str) -> None:
        self.start_counts[endpoint_id] = self.start_counts.get(endpoint_id, 0) + 1

    def started(self, endpoint_id: str, timings: dict[str, float]) -> None:
        self.last_start_timings[endpoint_id] = timings
        recent = self.recent.setdefault(endpoint_id, deque(maxlen=KEEP_RECENT_PER_ENDPOINT))
        recent.append((datetime.now(UTC), timings["total_ms"]))
        self.start_seconds.append(timings["total_ms"] / 1000)
        del self.start_seconds[:-KEEP_START_SECONDS]

    def suspended(self, endpoint_id: str) -> None:
        self.suspend_counts[endpoint_id] = self.suspend_counts.get(endpoint_id, 0) + 1

    def recent_starts(self, endpoint_id: str) -> list[tuple[datetime, float]]:
        """The endpoint's last starts (wakes among them), oldest first: (ended at, ms)."""
        return list(self.recent.get(endpoint_id, ()))
