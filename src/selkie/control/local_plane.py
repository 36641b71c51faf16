"""The in-process ControlPlane: what the proxy asks, answered from the store and the
lifecycle manager of this process."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from sqlalchemy import select

from selkie.control.lifecycle import Lifecycle
from selkie.controlplane import (
    Access,
    AccessCache,
    Activity,
    Backend,
    ControlPlane,
    PoolMember,
)
from selkie.errors import NotFound
from selkie.metering import counters
from selkie.model import EndpointState, EndpointType, PoolerMode, utcnow
from selkie.store import Store, convert
from selkie.store.store import write_in_thread
from selkie.store.tables import EndpointRow, ProjectRow, RoleRow
from selkie.tasks import SharedTasks

# Seconds between stores of one endpoint's transfer count while its sessions are open (a
# crash of the control plane loses at most this much of it).
TRANSFER_FLUSH = 10.0


def _stamp(endpoint_id: str, at: datetime) -> Activity:
    return Activity(
        endpoint_id=endpoint_id,
        sessions=0,
        last_active=at,
        bytes_to_clients=0,
        bytes_from_clients=0,
        statements=0,
    )


class LocalControlPlane(ControlPlane):
    def __init__(
        self,
        *,
        store: Store,
        lifecycle: Lifecycle,
        cache_ttl: float = 1.0,
        pooler_max_backends: int = 0,
    ) -> None:
        self.store = store
        self.pooler_max_backends = pooler_max_backends
        self.lifecycle = lifecycle
        self._cache = AccessCache(cache_ttl)
        # One start per endpoint, shared by every waiting client.
        self._waking: SharedTasks[object] = SharedTasks()
        # When a client last woke or reached each endpoint: activity the scheduler must see
        # even before the client's first statement.
        self.woken: dict[str, datetime] = {}
        # The latest activity per endpoint, as proxies reported it (the scheduler reads it).
        self.activity: dict[str, Activity] = {}
        # What of each proxy's byte counts is stored, and when it was.
        self._transfer_seen: dict[tuple[str, str], int] = {}
        self._stored_active: dict[str, datetime | None] = {}
        self._touched: dict[str, float] = {}
        self._transfer_at: dict[tuple[str, str], float] = {}

    def pool_size(self, cu: float) -> int:
        """Backends per endpoint: configured, or 40 per CU (at least 10)."""
        if self.pooler_max_backends > 0:
            return self.pooler_max_backends
        return max(10, int(40 * cu))

    def _access(self, endpoint_id: str, role: str) -> Access | None:
        with self.store.read() as s:
            ep = s.get(EndpointRow, endpoint_id)
            if ep is None or ep.current_state == EndpointState.DELETED.value:
                return None
            project = s.get(ProjectRow, ep.project_id)
            if project is None or project.deleted_at is not None:
                return None
            row = s.execute(
                select(RoleRow).where(RoleRow.branch_id == ep.branch_id).where(RoleRow.name == role)
            ).scalar()
            if row is None:
                return None
            return Access(
                endpoint_id=ep.id,
                project_id=ep.project_id,
                role=row.name,
                password_hash=row.password_hash,
                require_tls=convert.project_settings(project.settings).require_tls,
                disabled=ep.disabled,
                pooler_enabled=ep.pooler_enabled,
                pooler_transaction_mode=ep.pooler_mode == PoolerMode.TRANSACTION.value,
                pooler_max_backends=self.pool_size(ep.autoscaling_limit_max_cu),
            )

    async def get_access(self, endpoint_id: str, role: str) -> Access | None:
        return await self._cache.get(
            endpoint_id, role, lambda: asyncio.to_thread(self._access, endpoint_id, role)
        )

    async def wake(self, endpoint_id: str) -> Backend:
        self.woken[endpoint_id] = utcnow()
        await self._waking.run(endpoint_id, lambda: self.lifecycle.start(endpoint_id, wake=True))
        woken = self.woken[endpoint_id] = utcnow()
        # Other control planes' schedulers see this client only through the store: note it
        # there (at most once a second per endpoint) before the client's first statement.
        now = time.monotonic()
        if self.lifecycle.started_within(endpoint_id, 1.0):
            # This wake's start wrote last_active with the endpoint's new state.
            self._touched[endpoint_id] = now
        elif now - self._touched.get(endpoint_id, 0.0) >= 1.0:
            self._touched[endpoint_id] = now
            await asyncio.to_thread(self._record, [_stamp(endpoint_id, woken)], [])
        info = await self.lifecycle.driver.inspect(endpoint_id)
        return Backend(endpoint_id=endpoint_id, host=info.host, port=info.port, socket=info.socket)

    def _read_pool(self, branch_id: str) -> list[PoolMember]:
        with self.store.read() as s:
            found = s.execute(
                select(EndpointRow.id, EndpointRow.current_state)
                .where(EndpointRow.branch_id == branch_id)
                .where(EndpointRow.type == EndpointType.READ_ONLY.value)
                .where(EndpointRow.current_state != EndpointState.DELETED.value)
                .where(EndpointRow.disabled.is_(False))
                .order_by(EndpointRow.id)
            ).all()
        return [
            PoolMember(
                endpoint_id=endpoint_id,
                active=state == EndpointState.ACTIVE.value,
                failed=state == EndpointState.FAILED.value,
            )
            for endpoint_id, state in found
        ]

    async def read_pool(self, branch_id: str) -> list[PoolMember]:
        return await asyncio.to_thread(self._read_pool, branch_id)

    async def compute_running(self, endpoint_id: str) -> bool:
        try:
            ep = await asyncio.to_thread(self.lifecycle.get, endpoint_id)
        except NotFound:
            return False
        return ep.current_state is EndpointState.ACTIVE

    def _record(self, items: list[Activity], transfer: list[Activity]) -> None:
        now = utcnow()
        with self.store.write() as s:
            for item in items:
                if item.last_active is None:
                    continue
                row = s.get(EndpointRow, item.endpoint_id)
                if row is not None and (
                    row.last_active is None or row.last_active < item.last_active
                ):
                    row.last_active = item.last_active
            for item in transfer:
                row = s.get(EndpointRow, item.endpoint_id)
                if row is None or item.source_started is None:
                    continue
                counters.count_reading(
                    s,
                    key=f"transfer:{item.source}:{item.endpoint_id}",
                    reading=item.bytes_to_clients,
                    run=item.source_started,
                    project_id=row.project_id,
                    subject_id=item.endpoint_id,
                    metric=counters.TRANSFER,
                    at=now,
                )

    async def report_activity(self, activity: list[Activity]) -> None:
        changed, transfer = [], []
        now = time.monotonic()
        for item in activity:
            self.activity[item.endpoint_id] = item
            if item.last_active is not None and item.last_active != self._stored_active.get(
                item.endpoint_id
            ):
                changed.append(item)
            # Bytes sent are stored at most every TRANSFER_FLUSH seconds per endpoint while
            # sessions are open, and as soon as the last one closes.
            key = (item.source, item.endpoint_id)
            due = item.sessions == 0 or now - self._transfer_at.get(key, 0.0) >= TRANSFER_FLUSH
            if item.source and due and self._transfer_seen.get(key) != item.bytes_to_clients:
                transfer.append(item)
        if not (changed or transfer):
            return
        # A lost race on a new mark (two reports at once) conflicts; the retry finds it.
        await write_in_thread(self._record, changed, transfer)
        # Only what was stored is remembered as stored: a failed write is tried again.
        for item in changed:
            self._stored_active[item.endpoint_id] = item.last_active
        for item in transfer:
            key = (item.source, item.endpoint_id)
            self._transfer_seen[key] = item.bytes_to_clients
            self._transfer_at[key] = now

    def last_active(self, endpoint_id: str) -> datetime | None:
        item = self.activity.get(endpoint_id)
        stamps = [t for t in (item.last_active if item else None, self.woken.get(endpoint_id)) if t]
        return max(stamps) if stamps else None
