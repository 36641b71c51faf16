"""The ControlPlane interface: everything the proxy may ask of the control plane.

The proxy depends on this module only. The in-process implementation lives in
:mod:`selkie.control.local_plane`; an HTTP one lets proxies run as separate replicas.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class Access:
    """What the proxy needs to authenticate a role of an endpoint, without its compute."""

    endpoint_id: str
    project_id: str
    role: str
    password_hash: str  # '*' + HEX(SHA1(SHA1(password)))
    require_tls: bool
    disabled: bool
    pooler_enabled: bool = False
    pooler_transaction_mode: bool = True
    # Backend connections the pooler may open to this endpoint's compute.
    pooler_max_backends: int = 10


@dataclass(frozen=True, kw_only=True)
class Backend:
    """Where a woken endpoint's compute listens."""

    endpoint_id: str
    host: str | None
    port: int | None
    socket: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Activity:
    """What one proxy saw of one endpoint since its last report."""

    endpoint_id: str
    sessions: int
    last_active: datetime | None
    bytes_to_clients: int
    bytes_from_clients: int
    statements: int
    # The reporting proxy (unique per process) and when it started: the byte counts are
    # cumulative since then, so a report counted twice or lost changes no bill.
    source: str = ""
    source_started: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class PoolMember:
    """A read-only endpoint of a branch's read pool, as the control plane sees it now."""

    endpoint_id: str
    active: bool  # its compute runs
    failed: bool  # its last start, health check or run failed


class AccessCache:
    """Access per (endpoint, role) for ``ttl`` seconds: a connection storm on one endpoint
    asks for the same role thousands of times a second. A reset password or deleted role is
    seen within ``ttl``, a new one too. Misses are cached as well, apart (so probing made-up
    names costs the store one look-up per name a second, answers as fast as a hit, and never
    evicts the entries of real roles)."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[float, Access]] = {}
        self._misses: dict[tuple[str, str], float] = {}

    async def get(
        self, endpoint_id: str, role: str, fetch: Callable[[], Awaitable[Access | None]]
    ) -> Access | None:
        key = (endpoint_id, role)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        missed = self._misses.get(key)
        if missed is not None and now - missed < self.ttl:
            return None
        access = await fetch()
        if access is not None:
            if len(self._entries) > self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (now, access)
            self._misses.pop(key, None)
        else:
            if len(self._misses) > self.MAX_ENTRIES:
                self._misses.clear()
            self._misses[key] = now
        return access


class ControlPlane(ABC):
    @abstractmethod
    async def get_access(self, endpoint_id: str, role: str) -> Access | None:
        """The role's stored hash, or None if the endpoint or role does not exist. Never
        wakes a compute."""

    @abstractmethod
    async def wake(self, endpoint_id: str) -> Backend:
        """Make the endpoint's compute run and return where it listens. Concurrent calls
        for one endpoint cause one start. Raises SelkieError (QuotaExceeded, Conflict for
        disabled or stopped endpoints, ComputeError) when it cannot."""

    @abstractmethod
    async def report_activity(self, activity: list[Activity]) -> None:
        """Per-endpoint activity for the suspend scheduler and metering."""

    @abstractmethod
    async def read_pool(self, branch_id: str) -> list[PoolMember]:
        """The branch's read-only endpoints (none: no such branch, or it has none). Never
        wakes a compute."""

    @abstractmethod
    async def compute_running(self, endpoint_id: str) -> bool:
        """Whether the endpoint is active now (its compute neither stopping nor stopped):
        a session its compute closed while this holds was ended by the server itself (its
        ``wait_timeout``, a ``KILL``), not by a suspend. Never wakes a compute."""
