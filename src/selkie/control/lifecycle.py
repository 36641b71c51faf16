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
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from selkie import model
from selkie.compute.base import ComputeDriver, ComputeInfo, ComputeSpec
from selkie.compute.mariadb import DatabaseSpec, RoleSpec
from selkie.config import Settings
from selkie.control.accounts import (
    Dropped,
    database_specs,
    dropped_names,
    role_specs,
    sync_accounts,
)
from selkie.control.history import History
from selkie.errors import (
    ComputeError,
    Conflict,
    QuotaExceeded,
    SelkieError,
    StateConflict,
    public_message,
)
from selkie.metering.starts import LifecycleObserver, StartMetrics
from selkie.metering.usage import quota_exceeded
from selkie.model import EndpointState, SuspendTier, utcnow
from selkie.storage.base import ParentState, StorageDriver, Storages
from selkie.store import Store, Usage, convert
from selkie.store import endpoints as rows
from selkie.store.endpoints import RUNNING, start_usage, stop_usage
from selkie.store.tables import BranchRow, EndpointRow

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a suspend waits for before_stop (the meter's last reading) before stopping anyway.
BEFORE_STOP_TIMEOUT = 2.0

STARTABLE = (
    EndpointState.INIT,
    EndpointState.SUSPENDED,
    EndpointState.STOPPED,
    EndpointState.FAILED,
)


@dataclass(frozen=True)
class _Target:
    """One endpoint with what starting it needs to know, read in one transaction."""

    endpoint: EndpointRow
    project: model.Project
    branch: BranchRow
    roles: list[RoleSpec]
    databases: list[DatabaseSpec]
    dropped: Dropped
    # Set when a start would exceed the project's quotas.
    refused: QuotaExceeded | None = None


class _LostRace(Exception):
    """A compare-and-set found the endpoint changed by someone else."""


class Lifecycle:
    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        driver: ComputeDriver,
        storages: Storages,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        timer: Callable[[], float] = time.monotonic,
        history: History | None = None,
        before_stop: Callable[[str], Awaitable[object]] | None = None,
        observer: LifecycleObserver | None = None,
    ) -> None:
        self.store = store
        # Durable storage of local branches (None: archive off, or computes elsewhere).
        self.history = history
        self.settings = settings
        self.driver = driver
        self.storages = storages
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        # Wall time (for the store) and elapsed time (deadlines, start timings).
        self.clock = clock
        self.timer = timer
        self._locks: dict[str, asyncio.Lock] = {}
        self.observer: LifecycleObserver = observer or StartMetrics()
        # Endpoints this process made active and has not begun to stop: lets a wake of a
        # running endpoint return without touching the store.
        self._active: set[str] = set()
        # When this process last made each endpoint active (its timer).
        self.last_started: dict[str, float] = {}
        # Run just before a running compute is stopped on purpose (the meter's last reading
        # of what it wrote); bounded in time, and its failure never blocks the stop.
        self.before_stop = before_stop
        # Seconds a frozen compute stays warm before it is stopped (0: suspends are cold).
        self.warm_seconds = settings.warm_suspend_seconds
        # Bytes frozen computes may hold together before the least recently active go cold.
        self.warm_memory = settings.warm_suspend_memory
        driver.on_unexpected_exit(self.on_compute_exit)

    @property
    def warm_enabled(self) -> bool:
        return self.warm_seconds > 0 and self.driver.supports_freeze

    def history_for(self, settings: model.ProjectSettings) -> History | None:
        """The history service, for a project whose branches it keeps."""
        if settings.storage_mode is model.StorageMode.PAGESERVER:
            return None
        return self.history

    def storage_for(self, settings: model.ProjectSettings) -> StorageDriver:
        return self.storages.for_settings(settings)

    def _binary_for(self, settings: model.ProjectSettings) -> str | None:
        if settings.storage_mode is model.StorageMode.PAGESERVER:
            return self.settings.pageserver_mariadbd or None
        return None

    def lock(self, endpoint_id: str) -> asyncio.Lock:
        return self._locks.setdefault(endpoint_id, asyncio.Lock())

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Store calls are blocking: they run in the default thread pool, off the loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _transition(
        self,
        endpoint_id: str,
        expected: EndpointState | tuple[EndpointState, ...],
        generation: int | None,
        new_state: EndpointState,
        usage: Usage | None = None,
        **fields: Any,
    ) -> int | None:
        """The compare-and-set (:func:`selkie.store.endpoints.transition`), off the loop."""
        return await self._db(
            rows.transition,
            self.store,
            endpoint_id,
            expected,
            generation,
            new_state,
            usage,
            **fields,
        )

    # --- reads -----------------------------------------------------------------------------

    def _load(self, endpoint_id: str, *, check_quota: bool = False) -> _Target:
        """The endpoint and what starting it needs; with ``check_quota``, also whether a
        start would pass its project's quotas (in the same trip off the loop)."""
        loaded = rows.load_for_start(self.store, endpoint_id)
        target = _Target(
            endpoint=loaded.endpoint,
            project=convert.project(loaded.project, proxy_host=self.settings.proxy_host),
            branch=loaded.branch,
            roles=role_specs(loaded.roles),
            databases=database_specs(loaded.databases),
            dropped=dropped_names(loaded.dropped),
        )
        if check_quota and EndpointState(loaded.endpoint.current_state) in STARTABLE:
            try:
                self._check_quota(target)
            except QuotaExceeded as exc:
                return dataclasses.replace(target, refused=exc)
        return target

    def get(self, endpoint_id: str) -> model.Endpoint:
        return convert.endpoint(
            rows.get(self.store, endpoint_id), domain=self.settings.proxy_domain
        )

    def _check_quota(self, target: _Target) -> None:
        settings = target.project.settings
        cu = target.endpoint.autoscaling_limit_max_cu
        if settings.max_cu is not None and cu > settings.max_cu:
            raise QuotaExceeded(
                f"endpoint size {cu} CU exceeds the project's limit of {settings.max_cu} CU"
            )
        if settings.max_active_endpoints is not None:
            active = rows.count_running(self.store, target.project.id, besides=target.endpoint.id)
            if active >= settings.max_active_endpoints:
                raise QuotaExceeded(
                    f"project {target.project.id} already has {active} active endpoints "
                    f"(limit {settings.max_active_endpoints})"
                )
        problems = quota_exceeded(self.store, target.project.id, settings, self.clock())
        if problems:
            raise QuotaExceeded(problems[0])

    # --- start -----------------------------------------------------------------------------

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
                except _LostRace:
                    # Another control plane changed it first (it is starting it, most
                    # likely): look again and wait for that to settle.
                    await asyncio.sleep(0.02)
            raise ComputeError(f"endpoint {endpoint_id} did not settle in time; try again")

    async def _start(self, target: _Target) -> str:
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
            raise _LostRace(ep.id)
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
        now = self.clock()
        done = await self._transition(
            ep.id,
            EndpointState.STARTING,
            gen,
            EndpointState.ACTIVE,
            usage=start_usage(ep, now, self._start_cu(ep)),
            current_cu=self._start_cu(ep),
            pending_state=None,
            last_seen_alive=now,
            started_at=now,
            last_active=now,
            failure_reason=None,
            compute_address=info.address,
            suspend_tier=None,
        )
        if done is None:
            # Someone (a delete, another control plane) moved it meanwhile: do not leave a
            # compute running that the store does not account for.
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
            raise StateConflict(f"endpoint {ep.id} changed while starting")
        self._started(ep.id, timings, t0)
        return ep.id

    def _started(self, endpoint_id: str, timings: dict[str, float], t0: float) -> None:
        now = self.timer()
        timings["total_ms"] = (now - t0) * 1000
        self.observer.started(endpoint_id, timings)
        self._active.add(endpoint_id)
        self.last_started[endpoint_id] = now

    def started_within(self, endpoint_id: str, seconds: float) -> bool:
        """This process made the endpoint active less than ``seconds`` ago (its store row
        then says so, with ``last_active`` set)."""
        at = self.last_started.get(endpoint_id)
        return at is not None and self.timer() - at < seconds

    async def _start_warm(self, target: _Target, t0: float) -> bool:
        """Thaw a warm endpoint's frozen compute and record it active in one compare-and-set
        (suspended → active: a thaw takes about a millisecond, so no ``starting`` between,
        and one store write instead of two on the wake's path). False when there is no
        frozen compute to thaw (it died, Selkie restarted): the caller starts one."""
        ep = target.endpoint
        state = EndpointState(ep.current_state)
        try:
            thawed = await self._thaw(target)
        except BaseException as exc:
            await self._fail_warm(ep.id, state, ep.generation, exc)
            raise
        if thawed is None:
            return False
        self.observer.starting(ep.id)
        info, timings = thawed
        now = self.clock()
        done = await self._transition(
            ep.id,
            state,
            ep.generation,
            EndpointState.ACTIVE,
            usage=start_usage(ep, now, self._start_cu(ep)),
            current_cu=self._start_cu(ep),
            pending_state=None,
            last_seen_alive=now,
            # The same server run as before the freeze: started_at stays (the meter's
            # counters go on from it).
            last_active=now,
            failure_reason=None,
            compute_address=info.address,
            suspend_tier=None,
        )
        if done is None:
            # Moved meanwhile (a delete): the thawed compute is not the store's to keep.
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
            raise _LostRace(ep.id)
        self._started(ep.id, timings, t0)
        return True

    async def _fail_warm(
        self, endpoint_id: str, state: EndpointState, generation: int, exc: BaseException
    ) -> None:
        """A thaw that failed half-way: the compute stopped, the endpoint failed (cold)."""
        reason = public_message(exc)
        if not isinstance(exc, SelkieError | asyncio.CancelledError):
            log.exception("thawing %s failed", endpoint_id)
        try:
            if self.history is not None:
                await self.history.detach(endpoint_id)
            await self.driver.stop(endpoint_id, timeout=self.stop_timeout)
        finally:
            await self._transition(
                endpoint_id,
                state,
                generation,
                EndpointState.FAILED,
                pending_state=None,
                failure_reason=reason[:4000],
                compute_address=None,
                suspend_tier=None,
            )

    async def _bring_up(self, target: _Target) -> tuple[ComputeInfo, dict[str, float]]:
        """The compute of a starting endpoint: its branch's data in place, the server
        started, the safekeeper following it, its accounts matching the store. Returns it
        with the milliseconds each phase took."""
        ep, settings = target.endpoint, target.project.settings
        t0 = self.timer()
        storage = self.storage_for(settings)
        await self.ensure_branch_data(target.branch, target.project)
        options = await storage.prepare_compute(target.branch.id, ep.id, settings)
        history = self.history_for(settings)
        if history is not None:
            await history.before_start(target.branch.id)
            options = {**options, **history.server_options(settings)}
        t1 = self.timer()
        port_hint = int(ep.compute_address.rsplit(":", 1)[1]) if ep.compute_address else None
        info = await self.driver.start(
            ComputeSpec(
                endpoint_id=ep.id,
                project_id=ep.project_id,
                branch_id=ep.branch_id,
                cu=self._start_cu(ep),
                datadir=storage.compute_datadir(target.branch.id, ep.id),
                server_options=options,
                port_hint=port_hint,
                binary=self._binary_for(settings),
                boost=self.settings.compute_startup_boost,
            ),
            timeout=self.start_timeout,
        )
        t2 = self.timer()
        if history is not None:
            # Before anything writes: with durability=sync the first commit waits for it.
            await history.attach(ep.id, target.branch.id, target.project, info.socket)
        await self._sync_accounts(target, force=False)
        await self._end_boost(ep.id)
        t3 = self.timer()
        return info, {
            "prepare_ms": (t1 - t0) * 1000,
            "mariadbd_start_ms": (t2 - t1) * 1000,
            "sync_accounts_ms": (t3 - t2) * 1000,
        }

    async def _thaw(self, target: _Target) -> tuple[ComputeInfo, dict[str, float]] | None:
        """A warm endpoint's frozen compute, running again: the safekeeper follows it again,
        accounts changed meanwhile are applied. None when there is none to thaw (it died
        while frozen, or Selkie restarted): the caller starts one."""
        ep = target.endpoint
        t0 = self.timer()
        info = await self.driver.thaw(ep.id, cu=self._start_cu(ep))
        if info is None:
            return None
        t1 = self.timer()
        history = self.history_for(target.project.settings)
        if history is not None:
            await history.attach(ep.id, target.branch.id, target.project, info.socket)
        await self._sync_accounts(target, force=False)
        return info, {
            "thaw_ms": (t1 - t0) * 1000,
            "sync_accounts_ms": (self.timer() - t1) * 1000,
        }

    def _start_cu(self, ep: EndpointRow) -> float:
        """An autoscaled compute starts small and the autoscaler grows it under load;
        where the driver cannot resize a running compute, it runs at its max."""
        if self.driver.supports_resize:
            return ep.autoscaling_limit_min_cu
        return ep.autoscaling_limit_max_cu

    async def _end_boost(self, endpoint_id: str) -> None:
        """The compute is ready: it gets its CPU limit. A failure leaves it running
        unlimited for now (the autoscaler's next pass tries again), never fails the start."""
        try:
            await self.driver.end_boost(endpoint_id)
        except ComputeError as exc:
            log.warning("compute %s keeps its startup boost for now: %s", endpoint_id, exc)

    async def _fail_start(self, endpoint_id: str, generation: int, reason: str) -> None:
        try:
            if self.history is not None:
                await self.history.detach(endpoint_id)
            await self.driver.stop(endpoint_id, timeout=self.stop_timeout)
        finally:
            await self._transition(
                endpoint_id,
                EndpointState.STARTING,
                generation,
                EndpointState.FAILED,
                pending_state=None,
                failure_reason=reason[:4000],
                compute_address=None,
            )

    async def ensure_branch_data(self, branch: BranchRow, project: model.Project) -> None:
        """Make the branch's data if it is not there yet (a copy of its parent, or of the
        template for a project's first branch); marks the branch ready."""
        storage = self.storage_for(project.settings)

        async def create() -> None:
            parent = None
            if branch.parent_id is not None:
                # A frozen server's files are no image to copy: the parent goes cold first.
                for warm_id in await self._db(rows.warm_ids, self.store, branch.parent_id):
                    await self.cool(warm_id)
                running = await self._running_of_branch(branch.parent_id)
                parent = ParentState(branch_id=branch.parent_id)
                if running is not None:
                    endpoint_id, socket = running
                    parent = ParentState(
                        branch_id=branch.parent_id,
                        running_socket=socket,
                        paused=(
                            (lambda: self.driver.paused(endpoint_id))
                            if self.driver.supports_pause
                            else None
                        ),
                    )
            await storage.create_branch(branch.id, parent=parent, settings=project.settings)

        history = self.history_for(project.settings)
        if history is not None:
            await history.ensure_branch(branch, project, create=create)
        elif not await asyncio.to_thread(storage.branch_exists, branch.id):
            await create()
        if branch.current_state != model.BranchState.READY.value:
            size = await storage.branch_size(branch.id)
            await self._db(rows.mark_branch_ready, self.store, branch.id, size)

    async def _running_of_branch(self, branch_id: str) -> tuple[str, Path] | None:
        """A running compute of the branch, and its socket."""
        for endpoint_id in await self._db(rows.running_ids, self.store, branch_id=branch_id):
            info = await self.driver.inspect(endpoint_id)
            if info.running and info.socket is not None:
                return endpoint_id, info.socket
        return None

    async def _sync_accounts(self, target: _Target, *, force: bool) -> None:
        """The compute's roles and databases made to match the store; the digest of what
        was applied is kept in the datadir when this machine holds it."""
        ep = target.endpoint
        datadir = None
        if self.driver.local_datadirs:
            storage = self.storage_for(target.project.settings)
            datadir = storage.compute_datadir(target.branch.id, ep.id)
        await sync_accounts(
            self.driver,
            ep.id,
            target.roles,
            target.databases,
            datadir=datadir,
            force=force,
            dropped=target.dropped,
        )

    async def apply_config(self, endpoint_id: str) -> bool:
        """Make a running compute's roles and databases match the store now. False when the
        endpoint is not running: the next start applies it."""
        async with self.lock(endpoint_id):
            target = await self._db(self._load, endpoint_id)
            if target.endpoint.current_state != EndpointState.ACTIVE.value:
                return False
            if not (await self.driver.inspect(endpoint_id)).running:
                return False
            await self._sync_accounts(target, force=True)
            return True

    # --- suspend, stop, delete -------------------------------------------------------------

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

    async def _freeze(self, target: _Target, generation: int) -> bool:
        """Settle a suspending endpoint warm: its compute frozen. False (nothing changed
        but the safekeeper let go) when the driver cannot freeze it: the caller stops it."""
        ep = target.endpoint
        await self._before_stop(ep.id)
        history = self.history_for(target.project.settings)
        if history is not None:
            # What the stream received is durable; it follows the compute again at the thaw.
            await history.detach(ep.id)
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
        self, target: _Target, generation: int, *, was: EndpointState, to: EndpointState
    ) -> None:
        """Stop a suspending endpoint's compute and settle it in ``to`` (failed, when the
        stop fails: never left suspending)."""
        ep = target.endpoint
        if was is EndpointState.ACTIVE:
            await self._before_stop(ep.id)
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

    async def _after_stop(self, target: _Target) -> None:
        """The compute stopped cleanly: the safekeeper takes what its stream had not (a
        failure keeps it in the compute's binary log, taken at the next start)."""
        history = self.history_for(target.project.settings)
        if history is None:
            return
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
                await self.history.detach(endpoint_id)
            await self.driver.stop(endpoint_id, timeout=self.stop_timeout)
            await self.driver.remove(endpoint_id)
        self._locks.pop(endpoint_id, None)

    async def adopt(self, endpoint_id: str) -> None:
        """Take over a compute found running after a restart (the safekeeper follows it
        again from where it stands)."""
        info = await self.driver.adopt(endpoint_id)
        if not info.running or self.history is None:
            return
        target = await self._db(self._load, endpoint_id)
        history = self.history_for(target.project.settings)
        if history is not None:
            await history.attach(endpoint_id, target.branch.id, target.project, info.socket)

    # --- health ----------------------------------------------------------------------------

    async def on_compute_exit(self, endpoint_id: str, reason: str) -> None:
        """A compute died without being asked to (kill -9, OOM): mark the endpoint failed
        with the reason from its error log; the next start or wake restarts it."""

        self._active.discard(endpoint_id)
        if await self._db(rows.fail_if_running, self.store, endpoint_id, reason, self.clock()):
            log.warning("endpoint %s failed: %s", endpoint_id, reason.splitlines()[0])
        if self.history is not None:
            # After the endpoint is marked: what the stream had is flushed (an fsync that
            # a busy disk may make slow); the rest stays in the compute's binary log.
            await self.history.detach(endpoint_id)

    async def suspend_all(self) -> None:
        """Clean shutdown of every compute this control plane runs (``selkie up`` exiting)."""

        ids = await self._db(rows.running_ids, self.store)
        ids += await self._db(rows.warm_ids, self.store)
        results = await asyncio.gather(*(self.suspend(i) for i in ids), return_exceptions=True)
        for endpoint_id, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not suspend %s at shutdown: %s", endpoint_id, result)
