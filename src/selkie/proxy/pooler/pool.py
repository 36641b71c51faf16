"""Backend connections shared by pooled client sessions, per endpoint, with a hard cap.

A backend is a logged-in connection to the compute for one role (and one set of
response-shaping capabilities and charset, so any client of that kind can read what it
sends). Clients beyond the cap wait in a queue; past ``wait_timeout`` they get a clear
error. Dead backends (the compute suspended) are dropped when next taken from the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from selkie.proxy.pooler.backends import Backend, PoolKey
from selkie.proxy.pooler.lane import Lane


class PoolTimeout(Exception):
    """No backend became free in time."""


class EndpointPool:
    """Backends of one endpoint. A released backend goes straight to the longest-waiting
    client of its kind (first come, first served; no wake-up that finds nothing), else to
    the idle list. Everything here runs on the event loop between awaits, so no lock."""

    def __init__(
        self,
        endpoint_id: str,
        *,
        cap: int,
        wait_timeout: float,
        lane: Callable[..., Lane | None] | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._cap = cap
        self._total = 0
        self.wait_timeout = wait_timeout
        self._idle: dict[PoolKey, list[Backend]] = {}
        # Clients waiting, oldest first. A future's result: a backend handed over (already
        # counted in use), or None: room was made, try again.
        self._waiters: deque[tuple[PoolKey, asyncio.Future[Backend | None]]] = deque()
        # The fast lane (lane.py) holds idle backends and runs parked sessions' plain
        # commands; what it holds is counted here too (idle, in use), not in total twice.
        self.lane = (
            lane(wait_timeout=wait_timeout, on_release=self._give, on_dead=self._dead)
            if lane is not None
            else None
        )
        self._sync_room()
        self._held = 0  # backends in use by sessions in Python (the lane counts its own)
        self.waiting = 0
        # What the metrics say, changed by the methods below only.
        self.clients = 0
        self.pinned = 0  # sessions (or SQL-over-HTTP transactions) holding a backend
        self.peak = 0  # most backends open at once (tests and metrics)
        self.resets = 0  # backends reset before another client used them

    @property
    def cap(self) -> int:
        return self._cap

    @cap.setter
    def cap(self, value: int) -> None:
        self._cap = value
        self._sync_room()

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = value
        self._sync_room()

    @property
    def in_use(self) -> int:
        """Backends lent to sessions, whether they run in Python or in the lane."""
        return self._held + (self.lane.c.in_use if self.lane is not None else 0)

    @contextlib.contextmanager
    def client(self) -> Iterator[None]:
        """A pooled client session, for as long as it lasts."""
        self.clients += 1
        try:
            yield
        finally:
            self.clients -= 1

    def pin_changed(self, pinned: bool) -> None:
        """A session started (True) or stopped (False) holding a backend between commands."""
        self.pinned += 1 if pinned else -1

    def was_reset(self) -> None:
        """A backend was reset before another client used it."""
        self.resets += 1

    def into_lane(self) -> None:
        """A session's backend goes into the lane with it: the lane counts it from now."""
        self._held -= 1

    def out_of_lane(self) -> None:
        """A backend comes back from the lane with its session (or stays with it when the
        lane could not take it): counted here again."""
        self._held += 1

    def _sync_room(self) -> None:
        """The lane opens no backends: it asks Python to when there is room for one."""
        if self.lane is not None:
            self.lane.c.set_room(self._cap - self._total)

    def metrics(self) -> dict[str, int]:
        idle = sum(len(v) for v in self._idle.values())
        waiting = self.waiting
        if self.lane is not None:
            idle += self.lane.c.idle
            waiting += self.lane.c.waiting
        return {
            "clients": self.clients,
            "backends_in_use": self.in_use,
            "backends_idle": idle,
            "clients_waiting": waiting,
            "pinned_sessions": self.pinned,
            "backends_peak": self.peak,
            "backend_resets": self.resets,
            "fast_lane_commands": self.lane.c.commands if self.lane is not None else 0,
        }

    async def acquire(
        self,
        key: PoolKey,
        connect: Callable[[], Awaitable[Backend]],
        *,
        prefer: Backend | None = None,
    ) -> Backend:
        """A backend for ``key``: ``prefer`` (the one this client used last, which needs no
        reset) when it is idle, else any idle one, else a new one under the cap, else wait
        for one to be handed over."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            backend = self._take_idle(key, prefer)
            if backend is not None:
                return backend
            if self.total < self.cap or self._evict_other_kind(key):
                self.total += 1
                self._held += 1
                self.peak = max(self.peak, self.total)
                break
            handed = await self._wait(key, deadline)
            if handed is not None:
                if handed.reusable():
                    return handed
                # It died while idle or on its way (the compute went away): its slot is
                # this client's to fill with a new one, not a prize for whoever asks next.
                handed.close()
                break
        try:
            return await connect()
        except BaseException:
            self.total -= 1
            self._held -= 1
            self._wake_first()
            raise

    def _take_idle(self, key: PoolKey, prefer: Backend | None) -> Backend | None:
        idle = self._idle.get(key)
        if not idle:
            if self.lane is not None:
                backend = self.lane.take(key, prefer)
                if backend is not None:
                    self._held += 1
                    return backend
            return None
        if prefer is not None and prefer in idle and prefer.reusable():
            idle.remove(prefer)
            self._held += 1
            return prefer
        while idle:
            backend = idle.pop()
            if backend.reusable():
                self._held += 1
                return backend
            backend.close()
            self.total -= 1
        return None

    def _evict_other_kind(self, key: PoolKey) -> bool:
        """At the cap: close an idle backend of another kind to make room, if there is one."""
        other = next((k for k, v in self._idle.items() if v and k != key), None)
        if other is not None:
            self._idle[other].pop().close()
        elif self.lane is not None and (evicted := self.lane.evict(key)) is not None:
            evicted.close()
        else:
            return False
        self.total -= 1
        return True

    async def _wait(self, key: PoolKey, deadline: float) -> Backend | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PoolTimeout
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Backend | None] = loop.create_future()
        entry = (key, waiter)
        self._waiters.append(entry)
        self.waiting += 1
        if self.lane is not None:  # backends the lane frees come here first
            self.lane.c.waiting_for(self.lane.key(key), 1)
        timer = loop.call_later(remaining, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            # Cancelled (the client left) just as a backend or a retry was handed over:
            # pass it on to the next waiter rather than lose it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is None:
                    self._wake_first()
                else:
                    self._held -= 1
                    self._give(handed)
            raise
        finally:
            timer.cancel()
            self.waiting -= 1
            if self.lane is not None:
                self.lane.c.waiting_for(self.lane.key(key), -1)
            if waiter.cancelled() or not waiter.done() or waiter.exception() is not None:
                # Still queued (it timed out, or its client left): a waiter handed something
                # was taken off the queue by whoever handed it. (A failed remove would cost
                # a scan of the queue and the repr of a Backend for the error's message.)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)

    def _give(self, backend: Backend) -> None:
        """A free backend (not counted in use): to the oldest waiter of its kind, else idle,
        and a waiter of another kind is told to try again (it may close this one to make
        room for its own)."""
        for i, (key, waiter) in enumerate(self._waiters):
            if key == backend.key and not waiter.done():
                del self._waiters[i]
                self._held += 1
                waiter.set_result(backend)
                return
        if self.lane is None or not self.lane.give(backend):
            self._idle.setdefault(backend.key, []).append(backend)
        self._wake_first()

    def _dead(self, backend: Backend) -> None:
        """An idle backend in the lane was closed by the compute."""
        backend.close()
        self.total -= 1
        self._wake_first()

    def _wake_first(self) -> None:
        """Room was made (a backend closed, or idle of a kind nobody waits for): the oldest
        waiter tries again."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def release(self, backend: Backend, *, broken: bool = False) -> None:
        """A backend a session is done with: back to the pool, or closed when ``broken``
        or not reusable (a response not read to its end: it would reach the next user)."""
        self._held -= 1
        if broken or not backend.reusable():
            backend.close()
            self.total -= 1
            self._wake_first()
        else:
            self._give(backend)

    async def close(self) -> None:
        for backends in self._idle.values():
            for backend in backends:
                backend.close()
                self.total -= 1
        self._idle.clear()
        if self.lane is not None:
            for backend in self.lane.close():
                backend.close()
                self.total -= 1
            self.lane = None


def _expire(waiter: asyncio.Future[Backend | None]) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeout())
