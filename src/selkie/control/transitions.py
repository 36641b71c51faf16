"""What the starting and the stopping side of the endpoint lifecycle share (see
:mod:`selkie.control.lifecycle` for the state machine): :class:`Transitions`, the store's
side (per-endpoint locks, the compare-and-set, the reads a start needs, what this process
knows to be active), and :class:`Placement`, where a project's branch data lives."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from selkie import model
from selkie.compute.mariadb import DatabaseSpec, RoleSpec
from selkie.config import Settings
from selkie.control.accounts import (
    Dropped,
    database_specs,
    dropped_names,
    role_specs,
)
from selkie.control.history import History
from selkie.errors import (
    QuotaExceeded,
)
from selkie.metering.usage import quota_exceeded
from selkie.model import EndpointState, utcnow
from selkie.storage.base import StorageDriver, Storages
from selkie.store import Store, Usage, convert
from selkie.store import endpoints as rows
from selkie.store.tables import BranchRow, EndpointRow

log = logging.getLogger(__name__)
T = TypeVar("T")

STARTABLE = (
    EndpointState.INIT,
    EndpointState.SUSPENDED,
    EndpointState.STOPPED,
    EndpointState.FAILED,
)


@dataclass(frozen=True)
class Target:
    """One endpoint with what starting it needs to know, read in one transaction."""

    endpoint: EndpointRow
    project: model.Project
    branch: BranchRow
    roles: list[RoleSpec]
    databases: list[DatabaseSpec]
    dropped: Dropped
    # Set when a start would exceed the project's quotas.
    refused: QuotaExceeded | None = None


def read_only(endpoint: EndpointRow) -> bool:
    """A read-only compute (:mod:`selkie.control.replicas`): fed by the safekeeper, its own
    log no part of the branch's history."""
    return endpoint.type == model.EndpointType.READ_ONLY.value


class LostRace(Exception):
    """A compare-and-set found the endpoint changed by someone else."""


class Transitions:
    """The lifecycle's reads and writes of endpoint rows. Store calls are blocking: they
    run off the loop, in the default thread pool (:meth:`db`)."""

    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        # Wall time (for the store) and elapsed time (deadlines, start timings).
        self.clock = clock
        self.timer = timer
        self._locks: dict[str, asyncio.Lock] = {}
        # Endpoints this process made active and has not begun to stop: lets a wake of a
        # running endpoint return without touching the store.
        self.active: set[str] = set()
        # When this process last made each endpoint active (its timer).
        self.last_started: dict[str, float] = {}

    def lock(self, endpoint_id: str) -> asyncio.Lock:
        """The lock that serializes this process's actions on the endpoint."""
        return self._locks.setdefault(endpoint_id, asyncio.Lock())

    def forget(self, endpoint_id: str) -> None:
        """The endpoint is gone: its lock is dropped."""
        self._locks.pop(endpoint_id, None)

    def started_within(self, endpoint_id: str, seconds: float) -> bool:
        """This process made the endpoint active less than ``seconds`` ago (its store row
        then says so, with ``last_active`` set)."""
        at = self.last_started.get(endpoint_id)
        return at is not None and self.timer() - at < seconds

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking store call, run in the default thread pool, off the loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def transition(
        self,
        endpoint_id: str,
        expected: EndpointState | tuple[EndpointState, ...],
        generation: int | None,
        new_state: EndpointState,
        usage: Usage | None = None,
        **fields: Any,
    ) -> int | None:
        """The compare-and-set (:func:`selkie.store.endpoints.transition`), off the loop."""
        return await self.db(
            rows.transition,
            self.store,
            endpoint_id,
            expected,
            generation,
            new_state,
            usage,
            **fields,
        )

    def load(self, endpoint_id: str, *, check_quota: bool = False) -> Target:
        """The endpoint and what starting it needs; with ``check_quota``, also whether a
        start would pass its project's quotas (in the same trip off the loop)."""
        loaded = rows.load_for_start(self.store, endpoint_id)
        target = Target(
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

    def _check_quota(self, target: Target) -> None:
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


class Placement:
    """Where a project's branch data lives: its storage driver, the history service that
    keeps it durable (None: archive off, computes elsewhere, or a page server's project),
    the mariadbd its computes run."""

    def __init__(
        self, *, storages: Storages, history: History | None, pageserver_mariadbd: str = ""
    ) -> None:
        self.storages = storages
        # Durable storage of local branches (None: archive off, or computes elsewhere).
        self.history = history
        self.pageserver_mariadbd = pageserver_mariadbd

    def history_for(self, settings: model.ProjectSettings) -> History | None:
        """The history service, for a project whose branches it keeps."""
        if settings.storage_mode is model.StorageMode.PAGESERVER:
            return None
        return self.history

    def storage_for(self, settings: model.ProjectSettings) -> StorageDriver:
        return self.storages.for_settings(settings)

    def binary_for(self, settings: model.ProjectSettings) -> str | None:
        if settings.storage_mode is model.StorageMode.PAGESERVER:
            return self.pageserver_mariadbd or None
        return None
