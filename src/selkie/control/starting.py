"""Bringing an endpoint's compute up: its branch's data in place, the server started
(or a frozen one thawed), the safekeeper following it, its accounts matching the store;
and what a failed start leaves (the compute stopped, the endpoint failed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from selkie import model
from selkie.compute.base import ComputeDriver, ComputeInfo, ComputeSpec
from selkie.compute.diskfull import LOG_LINES, disk_full, disk_full_reason
from selkie.config import Settings
from selkie.control.accounts import sync_accounts
from selkie.control.transitions import (
    STARTABLE,
    LostRace,
    Placement,
    Target,
    Transitions,
    read_only,
)
from selkie.errors import (
    ComputeError,
    Conflict,
    DiskFull,
    SelkieError,
    StateConflict,
    public_message,
)
from selkie.metering.starts import LifecycleObserver
from selkie.model import EndpointState, SuspendTier
from selkie.storage.base import ParentState
from selkie.store import convert
from selkie.store import endpoints as rows
from selkie.store.endpoints import start_usage, stop_usage
from selkie.store.tables import BranchRow, EndpointRow

log = logging.getLogger(__name__)


class Starter:
    """Starts (or thaws) endpoints' computes, applies accounts and durability to running
    ones, makes branches' data, takes over computes found running."""

    def __init__(
        self,
        *,
        transitions: Transitions,
        placement: Placement,
        driver: ComputeDriver,
        settings: Settings,
        observer: LifecycleObserver,
        cool: Callable[[str], Awaitable[bool]],
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.transitions = transitions
        self.placement = placement
        self.driver = driver
        self.settings = settings
        self.observer = observer
        # Stops a warm endpoint's frozen compute (the stopping side's): a branch of its
        # branch needs its files still.
        self.cool = cool
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    async def start(self, endpoint_id: str, *, wake: bool = False) -> model.Endpoint | None:
        """Make the endpoint active and return it (None when it already was, as far as this
        process knows: the fast path of a wake). Concurrent calls share one start.

        ``wake`` is a start caused by a client connecting: it refuses endpoints stopped by
        request or disabled, where an explicit start would start a stopped one.
        """
        if (
            endpoint_id in self.transitions.active
            and not self.transitions.lock(endpoint_id).locked()
        ):
            info = await self.driver.inspect(endpoint_id)
            if info.running:
                return None
        async with self.transitions.lock(endpoint_id):
            # Woken by the start of whoever held the lock before us: nothing left to do.
            if (
                endpoint_id in self.transitions.active
                and (await self.driver.inspect(endpoint_id)).running
            ):
                return None
            # Long enough to wait out another control plane's whole start (branch data,
            # the compute's own start timeout, account sync) before giving up.
            deadline = self.transitions.timer() + 2 * self.start_timeout + 30
            while self.transitions.timer() < deadline:
                target = await self.transitions.db(
                    self.transitions.load, endpoint_id, check_quota=True
                )
                ep = target.endpoint
                state = EndpointState(ep.current_state)
                if ep.disabled:
                    raise Conflict(f"endpoint {endpoint_id} is disabled")
                if wake and state is EndpointState.STOPPED:
                    raise Conflict(f"endpoint {endpoint_id} is stopped; start it through the API")
                if state is EndpointState.ACTIVE:
                    info = await self.driver.inspect(endpoint_id)
                    if info.running:
                        self.transitions.active.add(endpoint_id)
                        return convert.endpoint(ep, domain=self.settings.proxy_domain)
                    # Recorded active, but its process is gone: a failure we had not seen.
                    await self.transitions.transition(
                        endpoint_id,
                        EndpointState.ACTIVE,
                        ep.generation,
                        EndpointState.FAILED,
                        usage=stop_usage(ep, self.transitions.clock()),
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
                    return (
                        None if wake else await self.transitions.db(self.transitions.get, started)
                    )
                except LostRace:
                    # Another control plane changed it first (it is starting it, most
                    # likely): look again and wait for that to settle.
                    await asyncio.sleep(0.02)
            raise ComputeError(f"endpoint {endpoint_id} did not settle in time; try again")

    async def _start(self, target: Target) -> str:
        """Start (or thaw) the endpoint; its id once it is active."""
        ep = target.endpoint
        t0 = self.transitions.timer()
        if target.refused is not None:
            raise target.refused
        if ep.suspend_tier == SuspendTier.WARM.value and await self._start_warm(target, t0):
            return ep.id
        gen = await self.transitions.transition(
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
            # A server that could not start for want of room says so in the lines it
            # logged: named, and not retried (another try meets the same full disk).
            evidence = await self._disk_full(ep.id) if isinstance(exc, ComputeError) else None
            if evidence is not None:
                reason = f"{disk_full_reason(evidence)}. {reason}"
            await self._fail_start(ep.id, gen, reason)
            if evidence is not None:
                raise DiskFull(disk_full_reason(evidence)) from exc
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

    def _started(self, endpoint_id: str, timings: dict[str, float], t0: float) -> None:
        now = self.transitions.timer()
        timings["total_ms"] = (now - t0) * 1000
        self.observer.started(endpoint_id, timings)
        self.transitions.active.add(endpoint_id)
        self.transitions.last_started[endpoint_id] = now

    async def _record_active(
        self,
        ep: EndpointRow,
        state: EndpointState,
        generation: int,
        info: ComputeInfo,
        *,
        new_run: bool,
    ) -> int | None:
        """The compare-and-set that makes a started (``new_run``) or thawed compute's
        endpoint active, its billing interval begun; None when it moved meanwhile."""
        now = self.transitions.clock()
        return await self.transitions.transition(
            ep.id,
            state,
            generation,
            EndpointState.ACTIVE,
            usage=start_usage(ep, now, self._start_cu(ep)),
            current_cu=self._start_cu(ep),
            pending_state=None,
            last_seen_alive=now,
            last_active=now,
            failure_reason=None,
            compute_address=info.address,
            suspend_tier=None,
            **({"started_at": now} if new_run else {}),
        )

    async def _disk_full(self, endpoint_id: str) -> str | None:
        """What the server's log says of a full disk in its last run (the error's own text
        holds only its last lines: a backtrace, after an abort)."""
        try:
            tail = await asyncio.to_thread(self.driver.error_log_tail, endpoint_id, lines=LOG_LINES)
        except Exception:
            return None  # no log to read: no cause to name
        return disk_full(tail)

    async def _start_warm(self, target: Target, t0: float) -> bool:
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
        # The same server run as before the freeze: started_at stays (the meter's counters
        # go on from it).
        done = await self._record_active(ep, state, ep.generation, info, new_run=False)
        if done is None:
            # Moved meanwhile (a delete): the thawed compute is not the store's to keep.
            await self.driver.stop(ep.id, timeout=self.stop_timeout)
            raise LostRace(ep.id)
        self._started(ep.id, timings, t0)
        return True

    async def _fail_warm(
        self, endpoint_id: str, state: EndpointState, generation: int, exc: BaseException
    ) -> None:
        """A thaw that failed half-way: the compute stopped, the endpoint failed (cold)."""
        if not isinstance(exc, SelkieError | asyncio.CancelledError):
            log.exception("thawing %s failed", endpoint_id)
        await self._fail_start(
            endpoint_id, generation, public_message(exc), state=state, suspend_tier=None
        )

    async def _bring_up(self, target: Target) -> tuple[ComputeInfo, dict[str, float]]:
        """The compute of a starting endpoint: its branch's data in place, the server
        started, the safekeeper following it, its accounts matching the store. Returns it
        with the milliseconds each phase took."""
        ep, settings = target.endpoint, target.project.settings
        if read_only(ep):
            return await self._bring_up_read_only(target)
        t0 = self.transitions.timer()
        storage = self.placement.storage_for(settings)
        await self.ensure_branch_data(target.branch, target.project)
        options = await storage.prepare_compute(target.branch.id, ep.id, settings)
        history = self.placement.history_for(settings)
        if history is not None:
            await history.before_start(target.branch.id)
            options = {**options, **history.server_options(settings)}
        t1 = self.transitions.timer()
        info = await self._start_server(
            target, storage.compute_datadir(target.branch.id, ep.id), options
        )
        t2 = self.transitions.timer()
        if history is not None:
            # Before anything writes: with durability=sync the first commit waits for it.
            await history.following.attach(
                ep.id, target.branch.id, target.project, info, started=True
            )
        await self._sync_accounts(target, force=False)
        await self._end_boost(ep.id)
        t3 = self.transitions.timer()
        return info, {
            "prepare_ms": (t1 - t0) * 1000,
            "mariadbd_start_ms": (t2 - t1) * 1000,
            "sync_accounts_ms": (t3 - t2) * 1000,
        }

    async def _bring_up_read_only(self, target: Target) -> tuple[ComputeInfo, dict[str, float]]:
        """A read-only compute: its own datadir on the branch's current timeline (made from
        the history the first time), the server started read-only, replicating from the
        safekeeper and caught up with it. The branch's primary is not touched."""
        ep, settings = target.endpoint, target.project.settings
        history = self.placement.history_for(settings)
        if history is None:
            raise Conflict("read-only computes need durable storage (archive_url is off)")
        t0 = self.transitions.timer()
        datadir, options = await history.replicas.prepare(target.branch.id, ep.id)
        t1 = self.transitions.timer()
        info = await self._start_server(target, datadir, options)
        t2 = self.transitions.timer()
        await history.replicas.attach(ep.id, target.branch.id)
        await self._end_boost(ep.id)
        return info, {
            "prepare_ms": (t1 - t0) * 1000,
            "mariadbd_start_ms": (t2 - t1) * 1000,
            "catch_up_ms": (self.transitions.timer() - t2) * 1000,
        }

    async def _start_server(
        self, target: Target, datadir: Path, options: dict[str, str]
    ) -> ComputeInfo:
        ep = target.endpoint
        port_hint = int(ep.compute_address.rsplit(":", 1)[1]) if ep.compute_address else None
        return await self.driver.start(
            ComputeSpec(
                endpoint_id=ep.id,
                project_id=ep.project_id,
                branch_id=ep.branch_id,
                cu=self._start_cu(ep),
                datadir=datadir,
                server_options=options,
                port_hint=port_hint,
                binary=self.placement.binary_for(target.project.settings),
                boost=self.settings.compute_startup_boost,
            ),
            timeout=self.start_timeout,
        )

    async def _thaw(self, target: Target) -> tuple[ComputeInfo, dict[str, float]] | None:
        """A warm endpoint's frozen compute, running again: the safekeeper follows it again,
        accounts changed meanwhile are applied. None when there is none to thaw (it died
        while frozen, or Selkie restarted): the caller starts one."""
        ep = target.endpoint
        t0 = self.transitions.timer()
        info = await self.driver.thaw(ep.id, cu=self._start_cu(ep))
        if info is None:
            return None
        t1 = self.transitions.timer()
        history = self.placement.history_for(target.project.settings)
        if read_only(ep):
            # Its replication threads reconnect on their own; it is caught up again.
            if history is not None:
                await history.replicas.attach(ep.id, target.branch.id)
            return info, {"thaw_ms": (t1 - t0) * 1000}
        if history is not None:
            # Also brings its durability in line with a change made while it was frozen.
            await history.following.attach(ep.id, target.branch.id, target.project, info)
        await self._sync_accounts(target, force=False)
        return info, {
            "thaw_ms": (t1 - t0) * 1000,
            "sync_accounts_ms": (self.transitions.timer() - t1) * 1000,
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

    async def _fail_start(
        self,
        endpoint_id: str,
        generation: int,
        reason: str,
        *,
        state: EndpointState = EndpointState.STARTING,
        **fields: Any,
    ) -> None:
        """A start that failed: the compute stopped, the endpoint failed (from ``state``)."""
        try:
            if self.placement.history is not None:
                await self.placement.history.following.detach(endpoint_id)
            await self.driver.stop(endpoint_id, timeout=self.stop_timeout)
        finally:
            await self.transitions.transition(
                endpoint_id,
                state,
                generation,
                EndpointState.FAILED,
                pending_state=None,
                failure_reason=reason[:4000],
                compute_address=None,
                **fields,
            )

    async def ensure_branch_data(self, branch: BranchRow, project: model.Project) -> None:
        """Make the branch's data if it is not there yet (a copy of its parent, or of the
        template for a project's first branch); marks the branch ready."""
        storage = self.placement.storage_for(project.settings)

        async def create() -> None:
            parent = None
            if branch.parent_id is not None:
                # A frozen server's files are no image to copy: the parent goes cold first.
                for warm_id in await self.transitions.db(
                    rows.warm_ids, self.transitions.store, branch.parent_id
                ):
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

        history = self.placement.history_for(project.settings)
        if history is not None:
            await history.ensure_branch(branch, project, create=create)
        elif not await asyncio.to_thread(storage.branch_exists, branch.id):
            await create()
        if branch.current_state != model.BranchState.READY.value:
            size = await storage.branch_size(branch.id)
            await self.transitions.db(
                rows.mark_branch_ready, self.transitions.store, branch.id, size
            )

    async def _running_of_branch(self, branch_id: str) -> tuple[str, Path] | None:
        """A running compute of the branch, and its socket."""
        for endpoint_id in await self.transitions.db(
            rows.running_ids, self.transitions.store, branch_id=branch_id
        ):
            info = await self.driver.inspect(endpoint_id)
            if info.running and info.socket is not None:
                return endpoint_id, info.socket
        return None

    async def _sync_accounts(self, target: Target, *, force: bool) -> None:
        """The compute's roles and databases made to match the store; the digest of what
        was applied is kept in the datadir when this machine holds it."""
        ep = target.endpoint
        datadir = None
        if self.driver.local_datadirs:
            storage = self.placement.storage_for(target.project.settings)
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
        async with self.transitions.lock(endpoint_id):
            target = await self.transitions.db(self.transitions.load, endpoint_id)
            if target.endpoint.current_state != EndpointState.ACTIVE.value:
                return False
            if read_only(target.endpoint):
                return False  # its accounts arrive by replication
            if not (await self.driver.inspect(endpoint_id)).running:
                return False
            await self._sync_accounts(target, force=True)
            return True

    async def apply_durability(self, endpoint_id: str) -> bool:
        """Make a running compute's commits wait for the safekeeper or not, as its
        project's ``settings.durability`` says now (see :mod:`selkie.control.durability`);
        ComputeError when that did not take. False when the endpoint is not running: its
        next start or thaw applies it."""
        async with self.transitions.lock(endpoint_id):
            target = await self.transitions.db(self.transitions.load, endpoint_id)
            if target.endpoint.current_state != EndpointState.ACTIVE.value:
                return False
            history = self.placement.history_for(target.project.settings)
            info = await self.driver.inspect(endpoint_id)
            if history is None or not info.running or read_only(target.endpoint):
                return False
            await history.following.attach(
                endpoint_id, target.branch.id, target.project, info, live=True
            )
            return True

    async def adopt(self, endpoint_id: str) -> None:
        """Take over a compute found running after a restart (the safekeeper follows it
        again from where it stands)."""
        info = await self.driver.adopt(endpoint_id)
        if not info.running or self.placement.history is None:
            return
        target = await self.transitions.db(self.transitions.load, endpoint_id)
        history = self.placement.history_for(target.project.settings)
        if history is not None and read_only(target.endpoint):
            return  # it goes on replicating
        if history is not None:
            await history.following.attach(endpoint_id, target.branch.id, target.project, info)
