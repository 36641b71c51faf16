"""The endpoint state machine, acting on computes through the drivers.

::

    init ─┐                 ┌────────── wake / start ───────────┐
          ▼                 │                                   │
      starting ──▶ active ──▶ suspending ──▶ suspended ─────────┘
          │          │                          ▲
          ▼          ▼ (process died)           │
        failed ◀─────┘ ─── start / wake ──▶ starting
    stopped: suspended by request with no auto-wake; deleted: gone for good.

A suspend by the scheduler is *warm* where the driver can freeze computes: ``suspended``
with ``suspend_tier = warm``, the compute frozen (no CPU, memory kept, still listening); a
start thaws it instead of starting a server. A warm endpoint goes *cold* (its compute
stopped, ``suspended`` through ``suspending``) after ``warm_suspend_seconds`` or under the
memory budget (the scheduler), and at any explicit suspend, stop, restore or branch of it.

Every transition is a compare-and-set on (state, generation) in the store
(:meth:`Store.transition_endpoint`); a lost CAS means another actor moved the endpoint, and
the caller re-reads and decides again. Within this process, one asyncio lock per endpoint
serializes actions, so concurrent wakes of one endpoint collapse into a single start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from selkie import model
from selkie.control.lifecycle_base import (
    BEFORE_STOP_TIMEOUT,
    STARTABLE,
    LostRace,
    Target,
    log,
    read_only,
)
from selkie.control.starting import Starting
from selkie.errors import (
    ComputeError,
    Conflict,
    SelkieError,
    StateConflict,
    public_message,
)
from selkie.model import EndpointState, SuspendTier
from selkie.store import convert
from selkie.store import endpoints as rows
from selkie.store.endpoints import RUNNING, stop_usage


class Lifecycle(Starting):
    async def start(self, endpoint_id: str, *, wake: bool = False) -> model.Endpoint | None:
        """Make the endpoint active and return it (None when it already was, as far as this
        process knows: the fast path of a wake). Concurrent calls share one start.

        ``wake`` is a start caused by a client connecting: it refuses endpoints stopped by
        request or disabled, where an explicit start would start a stopped one.
        """
        if endpoint_id in self._active and not self.lock(endpoint_id).locked():
            info = await self.driver.inspect(endpoint_id)
            if info.running:
                return None
        async with self.lock(endpoint_id):
            # Woken by the start of whoever held the lock before us: nothing left to do.
            if endpoint_id in self._active and (await self.driver.inspect(endpoint_id)).running:
                return None
            # Long enough to wait out another control plane's whole start (branch data,
            # the compute's own start timeout, account sync) before giving up.
            deadline = self.timer() + 2 * self.start_timeout + 30
            while self.timer() < deadline:
                target = await self._db(self._load, endpoint_id, check_quota=True)
                ep = target.endpoint
                state = EndpointState(ep.current_state)
                if ep.disabled:
                    raise Conflict(f"endpoint {endpoint_id} is disabled")
                if wake and state is EndpointState.STOPPED:
                    raise Conflict(f"endpoint {endpoint_id} is stopped; start it through the API")
                if state is EndpointState.ACTIVE:
                    info = await self.driver.inspect(endpoint_id)
                    if info.running:
                        self._active.add(endpoint_id)
                        return convert.endpoint(ep, domain=self.settings.proxy_domain)
                    # Recorded active, but its process is gone: a failure we had not seen.
                    await self._transition(
                        endpoint_id,
                        EndpointState.ACTIVE,
                        ep.generation,
                        EndpointState.FAILED,
                        usage=stop_usage(ep, self.clock()),
                        failure_reason="compute was not running",
                        compute_address=None,
                    )
                    continue
                if state not in STARTABLE:
                    # starting/suspending by another control plane: wait for it to settle.
                    await asyncio.sleep(0.02)
                    continue
                try:
                    started = await self._start(target)
                    # A wake's caller wants the compute, not the row: no read for it.
                    return None if wake else await self._db(self.get, started)
                except LostRace:
                    # Another control plane changed it first (it is starting it, most
                    # likely): look again and wait for that to settle.
                    await asyncio.sleep(0.02)
            raise ComputeError(f"endpoint {endpoint_id} did not settle in time; try again")

    async def _start(self, target: Target) -> str:
        """Start (or thaw) the endpoint; its id once it is active."""
        ep = target.endpoint
        t0 = self.timer()
        if target.refused is not None:
            raise target.refused
        if ep.suspend_tier == SuspendTier.WARM.value and await self._start_warm(target, t0):
            return ep.id
        gen = await self._transition(
            ep.id,
            EndpointState(ep.current_state),
            ep.generation,
            EndpointState.STARTING,
            pending_state=EndpointState.ACTIVE.value,
        )
        if gen is None:
            raise LostRace(ep.id)
        self.observer.starting(ep.id)
        try:
            info, timings = await self._bring_up(target)
        except BaseException as exc:
            reason = public_message(exc)
            if not isinstance(exc, SelkieError | asyncio.CancelledError):
                log.exception("starting %s failed", ep.id)
            await self._fail_start(ep.id, gen, reason)
            if isinstance(exc, SelkieError | asyncio.CancelledError):
                raise
            raise ComputeError(f"starting {ep.id} failed: {reason}") from exc
        done = await self._record_active(ep, EndpointState.STARTING, gen, info, new_run=True)
        if done is None:
            # Someone (a delete, another control plane) moved it meanwhile: do not leave a
            # compute running that the store does not account for.
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
            raise StateConflict(f"endpoint {ep.id} changed while starting")
        self._started(ep.id, timings, t0)
        return ep.id

    async def suspend(
        self, endpoint_id: str, *, to: EndpointState = EndpointState.SUSPENDED, warm: bool = False
    ) -> model.Endpoint:
        """Clean shutdown of the compute; the endpoint ends ``suspended`` (or ``stopped``).
        With ``warm`` (the scheduler's idle suspends) the compute is frozen instead, where
        the driver can and warm suspend is on; a warm endpoint suspended again goes cold."""
        async with self.lock(endpoint_id):
            return await self._suspend(endpoint_id, to=to, warm=warm)

    async def cool(self, endpoint_id: str) -> bool:
        """Stop a warm endpoint's frozen compute (it stays suspended, now cold); False when
        it is no longer warm (a wake thawed it meanwhile, say)."""
        async with self.lock(endpoint_id):
            ep = await self._db(rows.get, self.store, endpoint_id)
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
                await stack.enter_async_context(self.lock(endpoint_id))
            running = []
            for endpoint_id in sorted(set(endpoint_ids)):
                before = await self._db(self.get, endpoint_id)
                if before.current_state in RUNNING:
                    running.append(endpoint_id)
                await self._suspend(endpoint_id, to=EndpointState.SUSPENDED)
            yield running

    async def _suspend(
        self, endpoint_id: str, *, to: EndpointState, warm: bool = False
    ) -> model.Endpoint:
        for _ in range(5):
            target = await self._db(self._load, endpoint_id)
            ep = target.endpoint
            state = EndpointState(ep.current_state)
            if state is EndpointState.SUSPENDED and ep.suspend_tier == SuspendTier.WARM.value:
                if warm and to is EndpointState.SUSPENDED:
                    return await self._db(self.get, endpoint_id)
                # Warm to cold: its frozen compute is stopped (thawed first, by the driver).
                gen = await self._transition(
                    ep.id, state, ep.generation, EndpointState.SUSPENDING, pending_state=to.value
                )
                if gen is None:
                    continue
                await self._stop_compute(target, gen, was=state, to=to)
                return await self._db(self.get, endpoint_id)
            if state in (EndpointState.INIT, EndpointState.SUSPENDED, EndpointState.STOPPED):
                if state is not to and state is not EndpointState.INIT:
                    await self._transition(
                        ep.id,
                        state,
                        ep.generation,
                        to,
                        pending_state=None,
                    )
                return await self._db(self.get, endpoint_id)
            self._active.discard(ep.id)
            gen = await self._transition(
                ep.id,
                state,
                ep.generation,
                EndpointState.SUSPENDING,
                usage=stop_usage(ep, self.clock()) if state is EndpointState.ACTIVE else None,
                pending_state=to.value,
            )
            if gen is None:
                continue
            freeze = warm and to is EndpointState.SUSPENDED and state is EndpointState.ACTIVE
            if not (freeze and self.warm_enabled and await self._freeze(target, gen)):
                await self._stop_compute(target, gen, was=state, to=to)
            self.observer.suspended(ep.id)
            return await self._db(self.get, endpoint_id)
        raise StateConflict(f"endpoint {endpoint_id} keeps changing state; try again")

    async def _before_stop(self, endpoint_id: str) -> None:
        if self.before_stop is not None:
            try:
                await asyncio.wait_for(self.before_stop(endpoint_id), BEFORE_STOP_TIMEOUT)
            except Exception as exc:
                log.warning("before stopping %s: %r", endpoint_id, exc)

    async def _freeze(self, target: Target, generation: int) -> bool:
        """Settle a suspending endpoint warm: its compute frozen. False (nothing changed
        but the safekeeper let go) when the driver cannot freeze it: the caller stops it."""
        ep = target.endpoint
        await self._before_stop(ep.id)
        history = self.history_for(target.project.settings)
        if history is not None:
            # What the stream received is durable; it follows the compute again at the thaw.
            await history.following.detach(ep.id)
        try:
            await self.driver.freeze(ep.id)
        except ComputeError as exc:
            log.warning("cannot freeze %s, suspending it cold: %s", ep.id, exc.message)
            return False
        done = await self._transition(
            ep.id,
            EndpointState.SUSPENDING,
            generation,
            EndpointState.SUSPENDED,
            pending_state=None,
            suspended_at=self.clock(),
            suspend_tier=SuspendTier.WARM.value,
        )
        if done is None:
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
        return True

    async def _stop_compute(
        self, target: Target, generation: int, *, was: EndpointState, to: EndpointState
    ) -> None:
        """Stop a suspending endpoint's compute and settle it in ``to`` (failed, when the
        stop fails: never left suspending)."""
        ep = target.endpoint
        history = self.history_for(target.project.settings)
        if was is EndpointState.ACTIVE:
            await self._before_stop(ep.id)
            if history is not None:
                await history.following.before_stop(ep.id)
        try:
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
            await self._after_stop(target)
            await self._transition(
                ep.id,
                EndpointState.SUSPENDING,
                generation,
                to,
                pending_state=None,
                suspended_at=self.clock(),
                compute_address=None,
                suspend_tier=SuspendTier.COLD.value if to is EndpointState.SUSPENDED else None,
            )
        except Exception as exc:
            # Failed is startable, so the next wake or start repairs it (the reconciler
            # covers a crash of this process).
            reason = public_message(exc)
            if not isinstance(exc, SelkieError):
                log.exception("suspending %s failed", ep.id)
            await self._transition(
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
        history = self.history_for(target.project.settings)
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

    async def restart(self, endpoint_id: str) -> model.Endpoint | None:
        await self.suspend(endpoint_id)
        return await self.start(endpoint_id)

    async def destroy(self, endpoint_id: str) -> None:
        """Stop and forget a deleted endpoint's compute (its branch data stays)."""
        self._active.discard(endpoint_id)
        async with self.lock(endpoint_id):
            if self.history is not None:
                await self.history.following.detach(endpoint_id)
            await self.driver.stop(endpoint_id, timeout=self.stop_timeout)
            await self.driver.remove(endpoint_id)
            if self.history is not None:
                await self.history.replicas.forget(endpoint_id)  # a read-only one's datadir
        self._locks.pop(endpoint_id, None)

    async def adopt(self, endpoint_id: str) -> None:
        """Take over a compute found running after a restart (the safekeeper follows it
        again from where it stands)."""
        info = await self.driver.adopt(endpoint_id)
        if not info.running or self.history is None:
            return
        target = await self._db(self._load, endpoint_id)
        history = self.history_for(target.project.settings)
        if history is not None and read_only(target.endpoint):
            return  # it goes on replicating
        if history is not None:
            await history.following.attach(endpoint_id, target.branch.id, target.project, info)

    async def on_compute_exit(self, endpoint_id: str, reason: str) -> None:
        """A compute died without being asked to (kill -9, OOM): mark the endpoint failed
        with the reason from its error log; the next start or wake restarts it."""

        self._active.discard(endpoint_id)
        if await self._db(rows.fail_if_running, self.store, endpoint_id, reason, self.clock()):
            log.warning("endpoint %s failed: %s", endpoint_id, reason.splitlines()[0])
        if self.history is not None:
            # After the endpoint is marked: what the stream had is flushed (an fsync that
            # a busy disk may make slow); the rest stays in the compute's binary log.
            await self.history.following.detach(endpoint_id)

    async def suspend_all(self) -> None:
        """Clean shutdown of every compute this control plane runs (``selkie up`` exiting)."""

        ids = await self._db(rows.running_ids, self.store)
        ids += await self._db(rows.warm_ids, self.store)
        results = await asyncio.gather(*(self.suspend(i) for i in ids), return_exceptions=True)
        for endpoint_id, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not suspend %s at shutdown: %s", endpoint_id, result)
