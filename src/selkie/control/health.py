"""Health checks: a compute that hangs is found, failed and stopped.

A compute that dies is the driver's to notice (its supervisor reports the exit). One that
hangs — stopped by a signal, stuck on a full disk or in its storage engine — keeps its
process and its port, and its clients wait on it for good. The scheduler's leader asks every
active compute a cheap question (``SELECT 1`` over its admin connection) every ``interval``
seconds, each with ``timeout`` seconds to answer; after ``misses`` unanswered in a row the
endpoint is marked failed with the reason and its compute stopped (killed when it does not
stop in ``stop_timeout``). The next wake or start starts it again, as after a crash. The
checks run in a task of their own: a hung compute never holds up the leader's tick.

A read-only compute that failed (it died, or failed its checks) is replaced without
waiting for a client: started again from its datadir, at most once every
``replace_every`` seconds each, twice as long after each start that failed (up to
``REPLACE_MAX``; a read pool sends its new connections elsewhere meanwhile). A primary is
never started this way: its clients' next connection does it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import datetime

from sqlalchemy import select

from selkie.compute.diskfull import LOG_LINES, disk_full, disk_full_reason
from selkie.control.lifecycle import Lifecycle
from selkie.errors import SelkieError
from selkie.model import EndpointState, EndpointType
from selkie.store import Store
from selkie.store import health as health_rows
from selkie.store.health import Observed
from selkie.store.tables import EndpointRow
from selkie.tasks import spawn

log = logging.getLogger(__name__)

INTERVAL = 2.0
TIMEOUT = 2.0
MISSES = 2
STOP_TIMEOUT = 2.0
REPLACE_EVERY = 10.0
REPLACE_MAX = 600.0
# Free bytes on a compute's datadir filesystem below which its error log is read for a full
# disk (a server waiting for room has taken what there was).
DISK_LOW = 2**20


class Health:
    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        *,
        interval: float = INTERVAL,
        timeout: float = TIMEOUT,
        misses: int = MISSES,
        stop_timeout: float = STOP_TIMEOUT,
        replace_every: float = REPLACE_EVERY,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.interval = interval
        self.timeout = timeout
        self.misses = misses
        self.stop_timeout = stop_timeout
        self.replace_every = replace_every
        self._replaced_at: dict[str, float] = {}
        # Per read-only compute whose last replacement failed: how long until the next.
        self._replace_wait: dict[str, float] = {}
        self._replacing: set[asyncio.Task[None]] = set()
        self._missed: dict[str, int] = {}
        self._last: datetime | None = None
        self._pass: asyncio.Task[None] | None = None
        # Computes failed and stopped for not answering, by endpoint (for /metrics).
        self.unhealthy: Counter[str] = Counter()
        # Health checks not answered in time, by endpoint (for /metrics).
        self.failed_checks: Counter[str] = Counter()

    async def tick(self, now: datetime) -> None:
        """Start a pass when one is due and none is running (the leader's tick)."""
        if self._pass is not None and not self._pass.done():
            return
        if self._last is not None and (now - self._last).total_seconds() < self.interval:
            return
        self._last = now
        self._pass = spawn(self.check_all(), name="health-checks")

    async def close(self) -> None:
        if self._pass is not None:
            self._pass.cancel()
        for task in list(self._replacing):
            task.cancel()

    def _active(self) -> dict[str, int]:
        """Active endpoints and the generation each is at."""
        with self.store.read() as s:
            return {
                endpoint_id: generation
                for endpoint_id, generation in s.execute(
                    select(EndpointRow.id, EndpointRow.generation).where(
                        EndpointRow.current_state == EndpointState.ACTIVE.value
                    )
                ).all()
            }

    async def check_all(self) -> None:
        active = await asyncio.to_thread(self._active)
        for gone in set(self._missed) - set(active):
            del self._missed[gone]  # suspended, stopped or failed meanwhile: count afresh
        at = self.lifecycle.transitions.clock()
        results = await asyncio.gather(
            *(self._check(endpoint_id, generation) for endpoint_id, generation in active.items())
        )
        # What this pass saw, for the API (every replica reads it from the store): one
        # transaction per pass. A compute the checks failed has its own record (_fail).
        observed = [o for o in results if o is not None]
        await asyncio.to_thread(health_rows.record_checks, self.store, observed, at)
        now = time.monotonic()
        for endpoint_id in await asyncio.to_thread(self._failed_read_only):
            wait = self._replace_wait.get(endpoint_id, self.replace_every)
            if now - self._replaced_at.get(endpoint_id, -wait) >= wait:
                self._replaced_at[endpoint_id] = now
                task = spawn(self._replace(endpoint_id), name=f"replace-{endpoint_id}")
                self._replacing.add(task)
                task.add_done_callback(self._replacing.discard)

    def _failed_read_only(self) -> list[str]:
        with self.store.read() as s:
            return list(
                s.execute(
                    select(EndpointRow.id)
                    .where(EndpointRow.current_state == EndpointState.FAILED.value)
                    .where(EndpointRow.type == EndpointType.READ_ONLY.value)
                    .where(EndpointRow.disabled.is_(False))
                ).scalars()
            )

    async def _replace(self, endpoint_id: str) -> None:
        log.warning("read-only compute %s failed; starting it again", endpoint_id)
        try:
            await self.lifecycle.start(endpoint_id)
        except SelkieError as exc:
            wait = min(REPLACE_MAX, 2 * self._replace_wait.get(endpoint_id, self.replace_every))
            self._replace_wait[endpoint_id] = wait
            log.warning(
                "read-only compute %s did not start again (next try in %.0f s): %s",
                endpoint_id,
                wait,
                exc,
            )
        else:
            self._replace_wait.pop(endpoint_id, None)

    async def _check(self, endpoint_id: str, generation: int) -> Observed | None:
        """Ask one compute; what was seen (None: nothing to record, it was gone or
        moved on)."""
        driver = self.lifecycle.driver
        try:
            if not (await driver.inspect(endpoint_id)).running:
                return None  # gone: the driver reports the exit itself
            # Bounded in the call too: a held server must not keep a worker thread.
            await asyncio.wait_for(
                driver.execute(endpoint_id, ["SELECT 1"], timeout=self.timeout), self.timeout + 1
            )
            full = await self._disk_full(endpoint_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not await asyncio.to_thread(self._still_active, endpoint_id):
                self._missed.pop(endpoint_id, None)  # it was suspending: not a miss
                return None
            missed = self._missed[endpoint_id] = self._missed.get(endpoint_id, 0) + 1
            self.failed_checks[endpoint_id] += 1
            log.warning(
                "compute %s did not answer its health check (%d of %d): %r",
                endpoint_id,
                missed,
                self.misses,
                exc,
            )
            if missed >= self.misses:
                await self._fail(endpoint_id, exc)
                return None
            return Observed(
                endpoint_id=endpoint_id,
                generation=generation,
                healthy=False,
                error=f"no answer to a health check ({missed} of {self.misses}): {_said(exc)}",
            )
        self._missed.pop(endpoint_id, None)
        if full is not None:
            # It answers, but its writers wait for room that will not come (the binary log
            # and Aria wait, retrying every minute): failed now, naming the cause.
            self.failed_checks[endpoint_id] += 1
            await self._fail(endpoint_id, reason=full)
            return None
        return Observed(endpoint_id=endpoint_id, generation=generation, healthy=True)

    async def _disk_full(self, endpoint_id: str) -> str | None:
        """The reason to fail a compute whose disk is full, by its server's own log, asked
        only when its datadir's filesystem has (almost) no room left; None otherwise."""
        driver = self.lifecycle.driver
        free = await driver.disk_free(endpoint_id)
        if free is None or free >= DISK_LOW:
            return None
        tail = await asyncio.to_thread(driver.error_log_tail, endpoint_id, lines=LOG_LINES)
        evidence = disk_full(tail)
        if evidence is None:
            return None
        return disk_full_reason(f"{evidence}; {free // 1024} KiB free")

    def _still_active(self, endpoint_id: str) -> bool:
        with self.store.read() as s:
            row = s.get(EndpointRow, endpoint_id)
            return row is not None and row.current_state == EndpointState.ACTIVE.value

    async def _fail(
        self, endpoint_id: str, exc: BaseException | None = None, *, reason: str = ""
    ) -> None:
        self._missed.pop(endpoint_id, None)
        self.unhealthy[endpoint_id] += 1
        if exc is not None:
            waited = self.misses * max(self.interval, self.timeout)
            reason = (
                f"compute unhealthy: it answered none of {self.misses} health checks in a "
                f"row (about {waited:.0f} s; last: {_said(exc)}); stopped, and started again "
                "on the next connection"
            )
        reason = await self.lifecycle.fail(endpoint_id, reason)
        await asyncio.to_thread(
            health_rows.record_failed,
            self.store,
            endpoint_id,
            reason,
            self.lifecycle.transitions.clock(),
            missed=self.misses if exc is not None else 0,
        )
        try:
            await self.lifecycle.driver.stop(endpoint_id, timeout=self.stop_timeout)
        except Exception:
            log.exception("could not stop unhealthy compute %s", endpoint_id)


def _said(exc: BaseException) -> str:
    """An error's first line, for a reason (a timeout has no message of its own)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
