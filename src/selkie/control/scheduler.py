"""The suspend scheduler: scale an endpoint to zero once it has been idle for its
``suspend_timeout_seconds``.

Activity is what the proxies report (statements, per endpoint, every second) plus the
store's ``last_active``; an endpoint also counts as active from the moment it started. When
an endpoint looks idle, the compute itself is asked before anything happens — open InnoDB
transactions, queries running, and statements that bypassed the proxy (its ``Questions``
counter) all keep it up. Then it is suspended: warm (its compute frozen) where the driver
can freeze computes, else with a clean fast shutdown. Warm endpoints go cold after the warm
timeout, or earlier, least recently active first, while frozen computes hold more memory
than the budget (:func:`cold_due`). A frozen compute a client is waiting on (a statement
sent on a session that was open when it froze) is woken as soon as the driver says so.

Each tick looks only at active endpoints (an indexed query), so its cost grows with them,
not with all endpoints. The clock is injected: tests of "suspend after 300 s" run in
milliseconds. Exactly one scheduler acts at a time (see :class:`LeaderLock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text

from selkie.control.base import ServiceBase
from selkie.control.lifecycle import Lifecycle
from selkie.errors import SelkieError
from selkie.model import EndpointState, OperationAction, SuspendTier, utcnow
from selkie.store import Store
from selkie.store.tables import EndpointRow, OperationRow
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
# How late activity may reach the scheduler: the proxies' report interval (1 s), a tick,
# and room for a report's trip from a proxy replica.
ACTIVITY_LAG = timedelta(seconds=2)
# How often running computes are noted alive in the store.
HEARTBEAT = timedelta(seconds=5)
# How long before its next scheduled EVENT a suspended compute is woken (a cold start takes
# under a second; a thaw, milliseconds).
EVENT_LEAD = timedelta(seconds=5)
_LEADER_KEY = 0x5E1C1E + 1


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """An active endpoint as the store records it."""

    endpoint_id: str
    suspend_timeout_seconds: int
    last_active: datetime | None
    started_at: datetime | None
    # Its next scheduled EVENT, as read at its last suspend: that time counts as activity.
    next_event_at: datetime | None = None


def idle_since(c: Candidate, reported: datetime | None) -> datetime | None:
    stamps = [t for t in (c.last_active, c.started_at, reported, c.next_event_at) if t is not None]
    return max(stamps) if stamps else None


def due(
    candidates: Iterable[Candidate],
    reported: Mapping[str, datetime | None],
    now: datetime,
    lag: timedelta = timedelta(0),
) -> list[str]:
    """The endpoints whose idle time has reached their timeout (a pure decision). ``lag``
    is how late activity may reach the scheduler (proxies report once a second): an
    endpoint is due only when it has been idle for its timeout plus that, so a session that
    ran a statement less than the timeout ago is never suspended, whatever the timeout."""
    out = []
    for c in candidates:
        if c.suspend_timeout_seconds < 0:
            continue
        since = idle_since(c, reported.get(c.endpoint_id))
        if since is None or now - since >= timedelta(seconds=c.suspend_timeout_seconds) + lag:
            out.append(c.endpoint_id)
    return out


@dataclass(frozen=True, kw_only=True)
class Warm:
    """A warm endpoint: when it froze, when it was last active, what its compute holds."""

    endpoint_id: str
    suspended_at: datetime | None
    last_active: datetime | None
    memory_bytes: int


def cold_due(warm: Iterable[Warm], now: datetime, seconds: float, budget: int) -> list[str]:
    """The warm endpoints to stop (a pure decision): those warm for ``seconds``, then, while
    the rest hold more than ``budget`` bytes together (0: no budget), the least recently
    active first."""
    out, rest = [], []
    for w in warm:
        if w.suspended_at is None or now - w.suspended_at >= timedelta(seconds=seconds):
            out.append(w.endpoint_id)
        else:
            rest.append(w)
    if budget > 0:
        total = sum(w.memory_bytes for w in rest)
        oldest = datetime.min.replace(tzinfo=now.tzinfo)
        for w in sorted(rest, key=lambda w: w.last_active or w.suspended_at or oldest):
            if total <= budget:
                break
            out.append(w.endpoint_id)
            total -= w.memory_bytes
    return out


# What the compute is asked before a suspend. Sessions of the admin account (the scheduler's
# own probe among them) do not count.
PROBE = [
    "SELECT COUNT(*) FROM information_schema.innodb_trx",
    "SELECT COUNT(*) FROM information_schema.processlist "
    "WHERE command NOT IN ('Sleep', 'Daemon', 'Binlog Dump') AND id <> CONNECTION_ID() "
    "AND user NOT IN ('system user', 'event_scheduler')",
    "SELECT VARIABLE_VALUE FROM information_schema.global_status WHERE VARIABLE_NAME = 'QUESTIONS'",
]


class LeaderLock:
    """Who may act. On SQLite there is one process: it always leads. On PostgreSQL a
    session-level advisory lock held on a dedicated connection; if that connection or its
    process dies, the lock is released and another control plane takes it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: Any = None
        self.held = False  # as of the last try

    def try_acquire(self) -> bool:
        self.held = self._try()
        return self.held

    def _try(self) -> bool:
        if not self.store.shared:
            return True
        try:
            if self._conn is None:
                self._conn = self.store.engine.connect()
            held = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": _LEADER_KEY}
            ).scalar()
            self._conn.commit()
            return bool(held)
        except Exception:
            log.warning("lost the scheduler leader lock connection", exc_info=True)
            self.release()
            return False

    def release(self) -> None:
        self.held = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        lifecycle: Lifecycle,
        reported: Callable[[str], datetime | None],
        clock: Callable[[], datetime] = utcnow,
        tick: float = TICK_SECONDS,
        on_suspend: Callable[[str], None] | None = None,
        on_tick: Callable[[datetime], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.reported = reported
        self.clock = clock
        self.tick = tick
        self.leader = LeaderLock(store)
        self.on_suspend = on_suspend
        # More work for the leader on each tick (the meter).
        self.on_tick = on_tick
        # Per endpoint: the compute's Questions counter and the driver's count of the
        # control plane's own statements, at the last probe.
        self._questions: dict[str, tuple[int, int]] = {}
        self._last_heartbeat: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._thawing: dict[str, asyncio.Task[None]] = {}
        self.suspended: list[str] = []  # what this scheduler suspended (tests, metrics)
        self.cooled: list[str] = []  # warm endpoints it stopped (tests, metrics)
        lifecycle.driver.on_client_waiting(self._client_waiting)

    def start(self) -> None:
        self._task = spawn(self._main(), name="suspend-scheduler")

    async def stop(self) -> None:
        await cancel(self._task)
        for task in list(self._thawing.values()):
            await cancel(task)
        await asyncio.to_thread(self.leader.release)

    def _client_waiting(self, endpoint_id: str) -> None:
        """A client is waiting on a frozen compute (a session that was open when it froze
        sent a statement, or someone connected around the proxy): wake it."""
        if endpoint_id not in self._thawing:
            self._thawing[endpoint_id] = spawn(self._thaw(endpoint_id), name=f"thaw-{endpoint_id}")

    async def _thaw(self, endpoint_id: str) -> None:
        try:
            log.info("a client is waiting on frozen %s: waking it", endpoint_id)
            await self.lifecycle.start(endpoint_id, wake=True)
        except Exception as exc:
            # Refused (a quota, disabled): stopped cold, so its clients get an answer (the
            # connection closes) instead of waiting on a frozen server forever.
            log.warning("cannot wake %s for a waiting client (%s); stopping it", endpoint_id, exc)
            with contextlib.suppress(Exception):
                await self.lifecycle.cool(endpoint_id)
        finally:
            self._thawing.pop(endpoint_id, None)

    async def _main(self) -> None:
        while True:
            try:
                if await asyncio.to_thread(self.leader.try_acquire):
                    await self.tick_once()
            except SelkieError as exc:
                log.error("scheduler: %s", exc.message)
            except Exception:
                log.exception("scheduler tick failed; going on")
            await asyncio.sleep(self.tick)

    def _candidates(self) -> list[Candidate]:
        with self.store.read() as s:
            rows = s.execute(
                select(EndpointRow).where(EndpointRow.current_state == EndpointState.ACTIVE.value)
            ).scalars()
            return [
                Candidate(
                    endpoint_id=r.id,
                    suspend_timeout_seconds=r.suspend_timeout_seconds,
                    last_active=r.last_active,
                    started_at=r.started_at,
                    next_event_at=r.next_event_at,
                )
                for r in rows
            ]

    def _warm(self) -> list[tuple[str, datetime | None, datetime | None]]:
        with self.store.read() as s:
            rows = s.execute(
                select(EndpointRow.id, EndpointRow.suspended_at, EndpointRow.last_active)
                .where(EndpointRow.current_state == EndpointState.SUSPENDED.value)
                .where(EndpointRow.suspend_tier == SuspendTier.WARM.value)
            ).all()
            return [(r[0], r[1], r[2]) for r in rows]

    async def cool_down(self, now: datetime) -> list[str]:
        """Stop the warm endpoints that are due (:func:`cold_due`); returns them."""
        lifecycle = self.lifecycle
        rows = await asyncio.to_thread(self._warm)
        if not rows:
            return []
        warm = [
            Warm(
                endpoint_id=endpoint_id,
                suspended_at=suspended_at,
                last_active=last_active,
                memory_bytes=lifecycle.driver.memory(endpoint_id) or 0,
            )
            for endpoint_id, suspended_at, last_active in rows
        ]
        done = []
        for endpoint_id in cold_due(warm, now, lifecycle.warm_seconds, lifecycle.warm_memory):
            try:
                if await lifecycle.cool(endpoint_id):
                    log.info("warm endpoint %s goes cold", endpoint_id)
                    self.cooled.append(endpoint_id)
                    done.append(endpoint_id)
            except Exception:
                log.exception("could not stop warm endpoint %s", endpoint_id)
        return done

    def _touch(self, endpoint_id: str, when: datetime) -> None:
        with self.store.write() as s:
            row = s.get(EndpointRow, endpoint_id)
            if row is not None and (row.last_active is None or row.last_active < when):
                row.last_active = when

    async def busy_on_compute(self, endpoint_id: str) -> str | None:
        """Why the compute itself says it is busy, or None."""
        trx, running, questions = await self.lifecycle.driver.execute(endpoint_id, PROBE)
        if int(trx[0][0]):
            return "open transaction"
        if int(running[0][0]):
            return "running query"
        now = (int(questions[0][0]), self.lifecycle.driver.admin_statements.get(endpoint_id, 0))
        before = self._questions.get(endpoint_id)
        self._questions[endpoint_id] = now
        # Statements the control plane ran itself (this probe, the meter's readings, the
        # safekeeper's checks) are counted by the driver; anything beyond came from elsewhere.
        if before is not None and (now[0] - before[0]) - (now[1] - before[1]) > 0:
            return "statements that bypassed the proxy"
        return None

    def _wake_for_events(self, now: datetime) -> list[tuple[str, datetime]]:
        """Suspended endpoints whose next scheduled EVENT is within :data:`EVENT_LEAD` get a
        start operation (its payload says why), once per event. The event's time counts as
        activity (:func:`idle_since`), so the endpoint stays up until it has run; its next
        suspend reads the event after."""
        woken: list[tuple[str, datetime]] = []
        due_now = (
            select(EndpointRow)
            .where(EndpointRow.current_state == EndpointState.SUSPENDED.value)
            .where(EndpointRow.next_event_at.is_not(None))
            .where(EndpointRow.next_event_at <= now + EVENT_LEAD)
            .where(EndpointRow.disabled.is_(False))
        )
        with self.store.read() as s:  # most ticks: nothing due, and no write
            if s.execute(due_now.limit(1)).first() is None:
                return woken
        with self.store.write() as s:
            for row in s.execute(due_now).scalars():
                at = row.next_event_at
                assert at is not None
                asked = s.execute(
                    select(OperationRow.id)
                    .where(OperationRow.endpoint_id == row.id)
                    .where(OperationRow.action == OperationAction.START_COMPUTE.value)
                    .where(OperationRow.created_at >= at - EVENT_LEAD - timedelta(seconds=1))
                    .limit(1)
                ).first()
                if asked is not None:
                    continue  # woken for it already (a start refused stays refused)
                ServiceBase.enqueue(
                    s,
                    project_id=row.project_id,
                    endpoint_id=row.id,
                    action=OperationAction.START_COMPUTE,
                    payload={"reason": "scheduled event", "event_at": at.isoformat()},
                )
                woken.append((row.id, at))
        return woken

    def _heartbeat(self, endpoint_ids: list[str], when: datetime) -> None:
        with self.store.write() as s:
            for row in s.execute(
                select(EndpointRow).where(EndpointRow.id.in_(endpoint_ids))
            ).scalars():
                if row.current_state == EndpointState.ACTIVE.value:
                    row.last_seen_alive = when

    async def tick_once(self) -> list[str]:
        """One pass: note which computes are alive (so a crash bills only up to then), then
        suspend what is due; returns the endpoints suspended."""
        now = self.clock()
        candidates = await asyncio.to_thread(self._candidates)
        if self._last_heartbeat is None or now - self._last_heartbeat >= HEARTBEAT:
            alive = [
                c.endpoint_id
                for c in candidates
                if (await self.lifecycle.driver.inspect(c.endpoint_id)).running
            ]
            if alive:
                await asyncio.to_thread(self._heartbeat, alive, now)
            self._last_heartbeat = now
        reported = {c.endpoint_id: self.reported(c.endpoint_id) for c in candidates}
        done = []
        for endpoint_id in due(candidates, reported, now, ACTIVITY_LAG):
            try:
                reason = await self.busy_on_compute(endpoint_id)
            except Exception as exc:
                log.warning("cannot probe %s before suspending: %s", endpoint_id, exc)
                continue
            if reason is not None:
                log.debug("not suspending %s: %s", endpoint_id, reason)
                await asyncio.to_thread(self._touch, endpoint_id, now)
                continue
            log.info("suspending idle endpoint %s", endpoint_id)
            if self.on_suspend is not None:
                self.on_suspend(endpoint_id)
            try:
                await self.lifecycle.suspend(endpoint_id, warm=True)
            except Exception:
                log.exception("could not suspend %s", endpoint_id)
                continue
            self._questions.pop(endpoint_id, None)
            self.suspended.append(endpoint_id)
            done.append(endpoint_id)
        await self.cool_down(now)
        woken = await asyncio.to_thread(self._wake_for_events, now)
        for endpoint_id, at in woken:
            log.info("waking %s for its scheduled event at %s", endpoint_id, at.isoformat())
        if self.on_tick is not None:
            await self.on_tick(now)
        return done
