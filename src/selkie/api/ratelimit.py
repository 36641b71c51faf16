"""A request rate limit per API key: a token bucket refilled at ``rate`` requests a second,
holding up to ``burst``. A key over it gets 429 with ``Retry-After``; other keys are not
slowed by it. In memory, per API process (each replica limits on its own)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from selkie.errors import RateLimited

MAX_KEYS = 100_000


class RateLimiter:
    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, 2 * rate)
        self.clock = clock
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()
        # Sync routes run in a thread pool: one lock around the buckets.
        self._lock = threading.Lock()

    def take(self, key_id: int) -> None:
        """Spend one request of ``key_id``'s budget; RateLimited when it has none left."""
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now)
                wait = (1 - tokens) / self.rate
                raise RateLimited(
                    f"more than {self.rate:g} requests a second from this API key; "
                    f"retry in {wait:.1f} s",
                    retry_after=wait,
                )
            self._buckets[key_id] = (tokens - 1, now)
            while len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
