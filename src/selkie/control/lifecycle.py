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

:class:`Lifecycle` is a facade over its parts, built here and given what they use by
constructor: :class:`~selkie.control.transitions.Transitions` (the store's side, shared),
:class:`~selkie.control.transitions.Placement` (where a project's data lives),
:class:`~selkie.control.starting.Starter` and :class:`~selkie.control.stopping.Stopper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from selkie import model
from selkie.compute.base import ComputeDriver
from selkie.config import Settings
from selkie.control.history import History
from selkie.control.starting import Starter
from selkie.control.stopping import Stopper, Warm
from selkie.control.transitions import Placement, Transitions
from selkie.metering.starts import LifecycleObserver, StartMetrics
from selkie.model import EndpointState, utcnow
from selkie.storage.base import StorageDriver, Storages
from selkie.store import Store
from selkie.store.tables import BranchRow


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
        self.driver = driver
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.transitions = Transitions(store=store, settings=settings, clock=clock, timer=timer)
        self.placement = Placement(
            storages=storages, history=history, pageserver_mariadbd=settings.pageserver_mariadbd
        )
        observer = observer or StartMetrics()
        self.warm = Warm(seconds=settings.warm_suspend_seconds, memory=settings.warm_suspend_memory)
        self.stopper = Stopper(
            transitions=self.transitions,
            placement=self.placement,
            driver=driver,
            observer=observer,
            warm=self.warm,
            stop_timeout=stop_timeout,
            before_stop=before_stop,
        )
        self.starter = Starter(
            transitions=self.transitions,
            placement=self.placement,
            driver=driver,
            settings=settings,
            observer=observer,
            cool=self.stopper.cool,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        driver.on_unexpected_exit(self.stopper.on_compute_exit)

    # --- warm suspend: the scheduler reads these, tests change them ------------------------

    @property
    def warm_seconds(self) -> float:
        """Seconds a frozen compute stays warm before it is stopped (0: suspends are cold)."""
        return self.warm.seconds

    @warm_seconds.setter
    def warm_seconds(self, seconds: float) -> None:
        self.warm.seconds = seconds

    @property
    def warm_memory(self) -> int:
        """Bytes frozen computes may hold together before the least recently active go
        cold."""
        return self.warm.memory

    @warm_memory.setter
    def warm_memory(self, memory: int) -> None:
        self.warm.memory = memory

    @property
    def warm_enabled(self) -> bool:
        return self.stopper.warm_enabled

    # --- the store's side ------------------------------------------------------------------

    def lock(self, endpoint_id: str) -> asyncio.Lock:
        return self.transitions.lock(endpoint_id)

    def get(self, endpoint_id: str) -> model.Endpoint:
        return self.transitions.get(endpoint_id)

    def started_within(self, endpoint_id: str, seconds: float) -> bool:
        return self.transitions.started_within(endpoint_id, seconds)

    def storage_for(self, settings: model.ProjectSettings) -> StorageDriver:
        return self.placement.storage_for(settings)

    # --- up --------------------------------------------------------------------------------

    async def start(self, endpoint_id: str, *, wake: bool = False) -> model.Endpoint | None:
        """Make the endpoint active and return it (None when it already was, as far as this
        process knows: the fast path of a wake). Concurrent calls share one start.

        ``wake`` is a start caused by a client connecting: it refuses endpoints stopped by
        request or disabled, where an explicit start would start a stopped one.
        """
        return await self.starter.start(endpoint_id, wake=wake)

    async def apply_config(self, endpoint_id: str) -> bool:
        return await self.starter.apply_config(endpoint_id)

    async def apply_durability(self, endpoint_id: str) -> bool:
        return await self.starter.apply_durability(endpoint_id)

    async def ensure_branch_data(self, branch: BranchRow, project: model.Project) -> None:
        await self.starter.ensure_branch_data(branch, project)

    async def adopt(self, endpoint_id: str) -> None:
        await self.starter.adopt(endpoint_id)

    # --- down ------------------------------------------------------------------------------

    async def suspend(
        self, endpoint_id: str, *, to: EndpointState = EndpointState.SUSPENDED, warm: bool = False
    ) -> model.Endpoint:
        """Clean shutdown of the compute; the endpoint ends ``suspended`` (or ``stopped``).
        With ``warm`` (the scheduler's idle suspends) the compute is frozen instead, where
        the driver can and warm suspend is on; a warm endpoint suspended again goes cold."""
        return await self.stopper.suspend(endpoint_id, to=to, warm=warm)

    async def cool(self, endpoint_id: str) -> bool:
        return await self.stopper.cool(endpoint_id)

    def paused(self, endpoint_ids: list[str]) -> contextlib.AbstractAsyncContextManager[list[str]]:
        return self.stopper.paused(endpoint_ids)

    async def destroy(self, endpoint_id: str) -> None:
        await self.stopper.destroy(endpoint_id)

    async def on_compute_exit(self, endpoint_id: str, reason: str) -> None:
        await self.stopper.on_compute_exit(endpoint_id, reason)

    async def fail(self, endpoint_id: str, reason: str) -> str:
        """Mark a running endpoint failed; the reason recorded (a full disk named first)."""
        return await self.stopper.fail(endpoint_id, reason)

    async def suspend_all(self) -> None:
        await self.stopper.suspend_all()

    async def restart(self, endpoint_id: str) -> model.Endpoint | None:
        await self.suspend(endpoint_id)
        return await self.start(endpoint_id)
