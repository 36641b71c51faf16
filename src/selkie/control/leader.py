"""What the scheduler's leader does besides suspending, on each of its ticks."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from selkie.control.branches import BranchService
from selkie.control.health import Health
from selkie.control.history import History
from selkie.control.lifecycle import Lifecycle
from selkie.control.meter import Meter
from selkie.control.quotas import Quotas
from selkie.control.reconciler import reconcile
from selkie.store import Store

log = logging.getLogger(__name__)


@dataclass
class LeaderWork:
    """What the scheduler's leader does besides suspending: health checks, metering,
    quotas, history upkeep, branches whose time has come (every ``expire_every`` seconds),
    and (when control planes share the store) settling what a control plane that died
    left half-done."""

    store: Store
    lifecycle: Lifecycle
    meter: Meter
    quotas: Quotas
    health: Health
    history: History | None = None
    branches: BranchService | None = None
    expire_every: float = 5.0
    reconcile_every: float = 30.0
    _last_reconcile: datetime | None = None
    _last_expiry: datetime | None = None

    async def tick(self, now: datetime) -> None:
        await self.health.tick(now)  # in a task of its own: a hung compute holds up nothing
        await self.meter.tick(now)
        await self.quotas.tick(now)
        if self.history is not None:
            await self.history.tick(now)
        await self._expire(now)
        if not self.store.shared:
            return  # the only control plane on its store: it reconciled when it started
        last = self._last_reconcile
        if last is None or (now - last).total_seconds() >= self.reconcile_every:
            self._last_reconcile = now
            await reconcile(self.store, self.lifecycle, shared=True)

    async def _expire(self, now: datetime) -> None:
        last = self._last_expiry
        if self.branches is None or (
            last is not None and (now - last).total_seconds() < self.expire_every
        ):
            return
        self._last_expiry = now
        for op in await asyncio.to_thread(self.branches.expire_due, now):
            log.info("branch %s expired: deleting it (operation %s)", op.branch_id, op.id)
