"""A control plane in memory, for unit tests of the proxy: the :class:`ControlPlane`
contract the proxy is written against, with roles and passwords, computes at addresses a
test gives, and wakes that fail as a test tells them to. It records what the proxy asked
(wakes, activity reports), so a test can say "nothing woke" without a state store or a
compute. A fake: evidence about the proxy's side of the contract only, never that waking,
suspending or metering work."""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass, field

from selkie.controlplane import Access, Activity, Backend, ControlPlane, PoolMember
from selkie.errors import NotFound


def stored_hash(password: str) -> str:
    """MariaDB's ``*HEX`` of SHA1(SHA1(password)), as the store keeps it."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


@dataclass
class FakeControlPlane(ControlPlane):
    access: dict[tuple[str, str], Access] = field(default_factory=dict)
    # Where each endpoint's compute listens once woken (none: the wake raises what
    # ``missing`` says, a NotFound by default).
    backends: dict[str, Backend] = field(default_factory=dict)
    # Per endpoint, what its next wakes raise, one each, in order; then they succeed.
    failures: dict[str, deque[BaseException]] = field(default_factory=dict)
    # Seconds each wake takes (a test of the wake timeout makes it long).
    wake_delay: float = 0.0
    read_pools: dict[str, list[PoolMember]] = field(default_factory=dict)
    running: dict[str, bool] = field(default_factory=dict)
    # What the proxy asked, in order.
    woken: list[str] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)
    reports: list[list[Activity]] = field(default_factory=list)

    def add_role(
        self,
        endpoint_id: str,
        role: str,
        password: str,
        *,
        require_tls: bool = False,
        disabled: bool = False,
        pooler_enabled: bool = False,
    ) -> Access:
        access = Access(
            endpoint_id=endpoint_id,
            project_id="proj-fake",
            role=role,
            password_hash=stored_hash(password),
            require_tls=require_tls,
            disabled=disabled,
            pooler_enabled=pooler_enabled,
        )
        self.access[(endpoint_id, role)] = access
        return access

    def fail_wakes(self, endpoint_id: str, *errors: BaseException) -> None:
        self.failures.setdefault(endpoint_id, deque()).extend(errors)

    async def get_access(self, endpoint_id: str, role: str) -> Access | None:
        self.asked.append((endpoint_id, role))
        return self.access.get((endpoint_id, role))

    async def wake(self, endpoint_id: str) -> Backend:
        self.woken.append(endpoint_id)
        if self.wake_delay:
            await asyncio.sleep(self.wake_delay)
        pending = self.failures.get(endpoint_id)
        if pending:
            raise pending.popleft()
        backend = self.backends.get(endpoint_id)
        if backend is None:
            raise NotFound(f"endpoint {endpoint_id} not found")
        self.running[endpoint_id] = True
        return backend

    async def report_activity(self, activity: list[Activity]) -> None:
        self.reports.append(activity)

    async def read_pool(self, branch_id: str) -> list[PoolMember]:
        return list(self.read_pools.get(branch_id, []))

    async def compute_running(self, endpoint_id: str) -> bool:
        return self.running.get(endpoint_id, False)
