"""Bringing an endpoint's compute down: a clean stop (or a freeze, for a warm suspend), the
safekeeper taking the end of its log, the endpoint settled suspended, stopped or failed;
a deleted endpoint's compute forgotten, a dead one's endpoint marked failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from selkie import model
from selkie.compute.base import ComputeDriver
from selkie.compute.diskfull import LOG_LINES, with_cause
from selkie.compute.events import EVENTS_QUERY, next_due
from selkie.control.transitions import Placement, Target, Transitions, read_only
from selkie.errors import ComputeError, SelkieError, StateConflict, public_message
from selkie.metering.starts import LifecycleObserver
from selkie.model import EndpointState, SuspendTier
from selkie.store import endpoints as rows
from selkie.store.endpoints import RUNNING, stop_usage

log = logging.getLogger(__name__)

# Seconds a suspend waits for before_stop (the meter's last reading) before stopping anyway.
BEFORE_STOP_TIMEOUT = 5.0


@dataclass
class Warm:
    """How long frozen computes stay warm, and how much memory they may hold together."""

    # Seconds a frozen compute stays warm before it is stopped (0: suspends are cold).
    seconds: float
    # Bytes frozen computes may hold together before the least recently active go cold.
    memory: int


class Stopper:
    """Suspends, stops and forgets endpoints' computes (warm where it can), and marks the
    endpoint of a compute that died failed."""

    def __init__(
        self,
        *,
        transitions: Transitions,
        placement: Placement,
        driver: ComputeDriver,
        observer: LifecycleObserver,
        warm: Warm,
        stop_timeout: float = 30.0,
        before_stop: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.transitions = transitions
        self.placement = placement
        self.driver = driver
        self.observer = observer
        self.warm = warm
        self.stop_timeout = stop_timeout
        # Run just before a running compute is stopped on purpose (the meter's last reading
        # of what it wrote); bounded in time, and its failure never blocks the stop.
        self.before_stop = before_stop

    @property
    def warm_enabled(self) -> bool:
        return self.warm.seconds > 0 and self.driver.supports_freeze

    async def suspend(
        self, endpoint_id: str, *, to: EndpointState = EndpointState.SUSPENDED, warm: bool = False
    ) -> model.Endpoint:
        """Clean shutdown of the compute; the endpoint ends ``suspended`` (or ``stopped``).
        With ``warm`` (the scheduler's idle suspends) the compute is frozen instead, where
        the driver can and warm suspend is on; a warm endpoint suspended again goes cold."""
        async with self.transitions.lock(endpoint_id):
            return await self._suspend(endpoint_id, to=to, warm=warm)

    async def cool(self, endpoint_id: str) -> bool:
        """Stop a warm endpoint's frozen compute (it stays suspended, now cold); False when
        it is no longer warm (a wake thawed it meanwhile, say)."""
        async with self.transitions.lock(endpoint_id):
            ep = await self.transitions.db(rows.get, self.transitions.store, endpoint_id)
            if not (
                ep.current_state == EndpointState.SUSPENDED.value
                and ep.suspend_tier == SuspendTier.WARM.value
            ):
                return False
            await self._suspend(endpoint_id, to=EndpointState.SUSPENDED)
            return True

    @contextlib.asynccontextmanager
    async def paused(self, endpoint_ids: list[str]) -> AsyncIterator[list[str]]:
        """Suspend the endpoints and keep them from starting until the block ends (a wake
        meanwhile waits for it, as for any start); yields those that were running."""
        async with contextlib.AsyncExitStack() as stack:
            for endpoint_id in sorted(set(endpoint_ids)):
                await stack.enter_async_context(self.transitions.lock(endpoint_id))
            running = []
            for endpoint_id in sorted(set(endpoint_ids)):
                before = await self.transitions.db(self.transitions.get, endpoint_id)
                if before.current_state in RUNNING:
                    running.append(endpoint_id)
                await self._suspend(endpoint_id, to=EndpointState.SUSPENDED)
            yield running

    async def _suspend(
        self, endpoint_id: str, *, to: EndpointState, warm: bool = False
    ) -> model.Endpoint:
        for _ in range(5):
            target = await self.transitions.db(self.transitions.load, endpoint_id)
            ep = target.endpoint
            state = EndpointState(ep.current_state)
            if state is EndpointState.SUSPENDED and ep.suspend_tier == SuspendTier.WARM.value:
                if warm and to is EndpointState.SUSPENDED:
                    return await self.transitions.db(self.transitions.get, endpoint_id)
                # Warm to cold: its frozen compute is stopped (thawed first, by the driver).
                gen = await self.transitions.transition(
                    ep.id, state, ep.generation, EndpointState.SUSPENDING, pending_state=to.value
                )
                if gen is None:
                    continue
                await self._stop_compute(target, gen, was=state, to=to)
                return await self.transitions.db(self.transitions.get, endpoint_id)
            if state in (EndpointState.INIT, EndpointState.SUSPENDED, EndpointState.STOPPED):
                if state is not to and state is not EndpointState.INIT:
                    await self.transitions.transition(
                        ep.id,
                        state,
                        ep.generation,
                        to,
                        pending_state=None,
                    )
                return await self.transitions.db(self.transitions.get, endpoint_id)
            self.transitions.active.discard(ep.id)
            gen = await self.transitions.transition(
                ep.id,
                state,
                ep.generation,
                EndpointState.SUSPENDING,
                usage=stop_usage(ep, self.transitions.clock())
                if state is EndpointState.ACTIVE
                else None,
                pending_state=to.value,
            )
            if gen is None:
                continue
            events = None
            if to is EndpointState.SUSPENDED and state is EndpointState.ACTIVE:
                events = await self._next_event(target)
            freeze = warm and to is EndpointState.SUSPENDED and state is EndpointState.ACTIVE
            if not (
                freeze and self.warm_enabled and await self._freeze(target, gen, events=events)
            ):
                await self._stop_compute(target, gen, was=state, to=to, events=events)
            self.observer.suspended(ep.id)
            return await self.transitions.db(self.transitions.get, endpoint_id)
        raise StateConflict(f"endpoint {endpoint_id} keeps changing state; try again")

    async def _before_stop(self, endpoint_id: str) -> None:
        if self.before_stop is not None:
            try:
                await asyncio.wait_for(self.before_stop(endpoint_id), BEFORE_STOP_TIMEOUT)
            except Exception as exc:
                log.warning("before stopping %s: %r", endpoint_id, exc)

    async def _next_event(self, target: Target) -> datetime | None:
        """When the compute's next scheduled EVENT is due (None: it has none), so the
        scheduler wakes it in time (compute/events.py). A read-only compute runs none."""
        if read_only(target.endpoint):
            return None
        try:
            _, rows_ = await self.driver.execute(target.endpoint.id, EVENTS_QUERY)
        except (SelkieError, ValueError) as exc:
            log.warning("cannot read %s's events before suspending it: %s", target.endpoint.id, exc)
            return None
        return next_due(rows_, self.transitions.clock())

    async def _freeze(
        self, target: Target, generation: int, *, events: datetime | None = None
    ) -> bool:
        """Settle a suspending endpoint warm: its compute frozen. False (nothing changed
        but the safekeeper let go) when the driver cannot freeze it: the caller stops it."""
        ep = target.endpoint
        await self._before_stop(ep.id)
        history = self.placement.history_for(target.project.settings)
        if history is not None:
            # What the stream received is durable; it follows the compute again at the thaw.
            await history.following.detach(ep.id)
        try:
            await self.driver.freeze(ep.id)
        except ComputeError as exc:
            log.warning("cannot freeze %s, suspending it cold: %s", ep.id, exc.message)
            return False
        done = await self.transitions.transition(
            ep.id,
            EndpointState.SUSPENDING,
            generation,
            EndpointState.SUSPENDED,
            pending_state=None,
            suspended_at=self.transitions.clock(),
            suspend_tier=SuspendTier.WARM.value,
            next_event_at=events,
        )
        if done is None:
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
        return True

    async def _stop_compute(
        self,
        target: Target,
        generation: int,
        *,
        was: EndpointState,
        to: EndpointState,
        events: datetime | None = None,
    ) -> None:
        """Stop a suspending endpoint's compute and settle it in ``to`` (failed, when the
        stop fails: never left suspending)."""
        ep = target.endpoint
        history = self.placement.history_for(target.project.settings)
        if was is EndpointState.ACTIVE:
            await self._before_stop(ep.id)
            if history is not None:
                await history.following.before_stop(ep.id)
        events_field: dict[str, Any] = (
            {"next_event_at": events} if was is EndpointState.ACTIVE else {}
        )
        try:
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
            await self._after_stop(target)
            await self.transitions.transition(
                ep.id,
                EndpointState.SUSPENDING,
                generation,
                to,
                pending_state=None,
                suspended_at=self.transitions.clock(),
                compute_address=None,
                suspend_tier=SuspendTier.COLD.value if to is EndpointState.SUSPENDED else None,
                # A running compute's events were read; a frozen one's were at its freeze.
                **events_field,
            )
        except Exception as exc:
            # Failed is startable, so the next wake or start repairs it (the reconciler
            # covers a crash of this process).
            reason = public_message(exc)
            if not isinstance(exc, SelkieError):
                log.exception("suspending %s failed", ep.id)
            await self.transitions.transition(
                ep.id,
                EndpointState.SUSPENDING,
                generation,
                EndpointState.FAILED,
                pending_state=None,
                failure_reason=f"suspend failed: {reason}"[:4000],
                compute_address=None,
            )
            raise

    async def _after_stop(self, target: Target) -> None:
        """The compute stopped cleanly: the safekeeper takes what its stream had not (a
        failure keeps it in the compute's binary log, taken at the next start)."""
        history = self.placement.history_for(target.project.settings)
        if history is None or read_only(target.endpoint):
            return  # a read-only compute's log is no history (its primary's is)
        try:
            await history.after_stop(target.endpoint.id, target.branch.id)
        except Exception as exc:
            log.error(
                "suspending %s: the safekeeper could not take the end of its log (it stays "
                "in the compute's binary log): %s",
                target.endpoint.id,
                exc,
            )

    async def destroy(self, endpoint_id: str) -> None:
        """Stop and forget a deleted endpoint's compute (its branch data stays)."""
        self.transitions.active.discard(endpoint_id)
        async with self.transitions.lock(endpoint_id):
            if self.placement.history is not None:
                await self.placement.history.following.detach(endpoint_id)
            await self.driver.stop(endpoint_id, timeout=self.stop_timeout)
            await self.driver.remove(endpoint_id)
            if self.placement.history is not None:
                await self.placement.history.replicas.forget(
                    endpoint_id
                )  # a read-only one's datadir
        self.transitions.forget(endpoint_id)

    async def on_compute_exit(self, endpoint_id: str, reason: str) -> None:
        """A compute died without being asked to (kill -9, OOM): mark the endpoint failed
        with the reason from its error log; the next start or wake restarts it."""
        await self.fail(endpoint_id, reason)

    async def fail(self, endpoint_id: str, reason: str) -> str:
        """Mark a running endpoint failed (its compute died, or hangs) and return the reason
        recorded: ``reason``, or, when its server's log says its disk is full, that first
        (the cause, where ``reason`` is only the symptom: an abort, unanswered checks)."""
        try:
            tail = await asyncio.to_thread(self.driver.error_log_tail, endpoint_id, lines=LOG_LINES)
        except Exception:  # a log that cannot be read names no cause; the failure stands
            log.exception("could not read the error log of %s", endpoint_id)
            tail = ""
        reason = with_cause(reason, tail)
        self.transitions.active.discard(endpoint_id)
        if await self.transitions.db(
            rows.fail_if_running,
            self.transitions.store,
            endpoint_id,
            reason,
            self.transitions.clock(),
        ):
            log.warning("endpoint %s failed: %s", endpoint_id, reason.splitlines()[0])
        if self.placement.history is not None:
            # After the endpoint is marked: what the stream had is flushed (an fsync that
            # a busy disk may make slow); the rest stays in the compute's binary log.
            await self.placement.history.following.detach(endpoint_id)
        return reason

    async def suspend_all(self) -> None:
        """Clean shutdown of every compute this control plane runs (``selkie up`` exiting)."""

        ids = await self.transitions.db(rows.running_ids, self.transitions.store)
        ids += await self.transitions.db(rows.warm_ids, self.transitions.store)
        results = await asyncio.gather(*(self.suspend(i) for i in ids), return_exceptions=True)
        for endpoint_id, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not suspend %s at shutdown: %s", endpoint_id, result)
