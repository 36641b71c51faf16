"""Quota enforcement: active endpoints of projects over their compute-time quota are
suspended (their next wake is refused with the reason). The scheduler's leader runs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from selkie.metering.usage import compute_quota_exceeded
from selkie.model import EndpointState
from selkie.store import Store, convert
from selkie.store.tables import EndpointRow, ProjectRow

log = logging.getLogger(__name__)


class Quotas:
    def __init__(
        self, *, store: Store, suspend: Callable[[str], Awaitable[Any]], interval: float = 60.0
    ) -> None:
        self.store = store
        self.suspend = suspend
        self.interval = interval
        self._last: datetime | None = None
        # Endpoints suspended for their quota (tests, diagnostics).
        self.suspended: list[str] = []

    async def tick(self, now: datetime) -> None:
        if self._last is not None and (now - self._last).total_seconds() < self.interval:
            return
        self._last = now
        await self.enforce(now)

    def _over_quota(self, now: datetime) -> dict[str, str]:
        """Active endpoints of projects over their compute-time quota, with the reason."""
        with self.store.read() as s:
            rows = s.execute(
                select(EndpointRow.id, ProjectRow.id, ProjectRow.settings)
                .join(ProjectRow, ProjectRow.id == EndpointRow.project_id)
                .where(EndpointRow.current_state == EndpointState.ACTIVE.value)
            ).all()
        by_project: dict[str, list[str]] = {}
        limits: dict[str, int] = {}
        for endpoint_id, project_id, raw in rows:
            limit = convert.project_settings(raw).compute_time_limit_seconds
            if limit is not None:
                by_project.setdefault(project_id, []).append(endpoint_id)
                limits[project_id] = limit
        out = {}
        for project_id, endpoints in by_project.items():
            why = compute_quota_exceeded(self.store, project_id, limits[project_id], now)
            if why is not None:
                out.update(dict.fromkeys(endpoints, why))
        return out

    async def enforce(self, now: datetime) -> None:
        for endpoint_id, why in (await asyncio.to_thread(self._over_quota, now)).items():
            log.warning("suspending %s: %s", endpoint_id, why)
            try:
                await self.suspend(endpoint_id)
            except Exception as exc:
                log.error("could not suspend %s over quota: %s", endpoint_id, exc)
                continue
            self.suspended.append(endpoint_id)
