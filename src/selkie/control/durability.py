"""Durability of running computes: a project's ``settings.durability`` applied to them
live, and what each one really does, read from its server.

With ``sync`` a compute's commits wait for the safekeeper (MariaDB's semi-synchronous
replication, wait point ``AFTER_SYNC``): the safekeeper follows it as a semi-sync replica
and the server has ``rpl_semi_sync_master_enabled``. A change is made in the order that
never has a commit wait for a replica that is not there: to ``sync``, the safekeeper joins
as a semi-sync replica first and the server waits for it after; to ``async``, the server
stops waiting first and the safekeeper follows as an asynchronous replica after.

What the durability route and ``/metrics`` say (``sync_commit``) comes from the server
(:class:`SemiSync`), read on demand or sampled, never from the setting: a compute started
before the setting changed, or one the change could not reach, shows what it does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from selkie.compute.base import ComputeDriver
from selkie.errors import ComputeError, SelkieError
from selkie.safekeeper.api import TimelineStatus

log = logging.getLogger(__name__)

# "on": commits wait for the safekeeper; "off": the server does not wait for it (async);
# "fallen_back": waiting is on, but commits do not wait now (the timeout made them
# asynchronous, or no semi-sync replica is connected: the next commit would time out).
SyncCommit = Literal["on", "off", "fallen_back"]

READ_STATEMENTS = (
    "SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_master_enabled'",
    "SHOW GLOBAL STATUS WHERE Variable_name IN "
    "('Rpl_semi_sync_master_status', 'Rpl_semi_sync_master_clients')",
)
DISABLE_STATEMENTS = ("SET GLOBAL rpl_semi_sync_master_enabled = OFF",)
# How long an on-demand reading waits for the server (the durability route).
READ_TIMEOUT = 1.0
# How long a live change waits for the safekeeper to join as a semi-sync replica.
JOIN_TIMEOUT = 5.0
# At a thaw (on the wake's path) it waits this long, then has the server wait anyway, as a
# cold start does: commits fall back after the timeout until the safekeeper is there.
THAW_JOIN_TIMEOUT = 1.0
POLL = 0.02

# (Re)subscribe the safekeeper to the compute, as a semi-sync replica or not.
Follow = Callable[[bool], Awaitable[None]]


def enable_statements(timeout_ms: int) -> tuple[str, ...]:
    """Have the server wait for the safekeeper (wait point and timeout as in my.cnf, set
    again in case the server started without them)."""
    return (
        "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'",
        f"SET GLOBAL rpl_semi_sync_master_timeout = {int(timeout_ms)}",
        "SET GLOBAL rpl_semi_sync_master_enabled = ON",
    )


@dataclass(frozen=True)
class SemiSync:
    """A compute's semi-synchronous replication as its server reports it."""

    enabled: bool  # rpl_semi_sync_master_enabled
    waiting: bool  # Rpl_semi_sync_master_status: not fallen back
    clients: int  # semi-sync replicas connected (the safekeeper)

    @property
    def sync_commit(self) -> SyncCommit:
        if not self.enabled:
            return "off"
        return "on" if self.waiting and self.clients > 0 else "fallen_back"

    @classmethod
    def parse(cls, results: Sequence[Sequence[tuple[Any, ...]]]) -> SemiSync:
        """From the rows of :data:`READ_STATEMENTS`."""
        values = {str(row[0]).lower(): str(row[1]) for rows in results for row in rows}
        try:
            return cls(
                enabled=values["rpl_semi_sync_master_enabled"].upper() == "ON",
                waiting=values["rpl_semi_sync_master_status"].upper() == "ON",
                clients=int(values["rpl_semi_sync_master_clients"]),
            )
        except (KeyError, ValueError) as exc:
            raise ComputeError(f"unexpected semi-sync status from the compute: {values}") from exc


@dataclass(frozen=True)
class Durable:
    """How durable an endpoint's commits are right now (``GET …/endpoints/{id}/durability``)."""

    endpoint_id: str
    durability: str  # the project's setting
    streaming: bool
    # What the compute does, read from its server (None: no compute runs, or it did not
    # answer in time).
    sync_commit: SyncCommit | None
    lag_seconds: float
    lag_bytes: int
    received: str | None  # the last GTID the safekeeper holds
    archived: str | None  # the last GTID the archive holds
    error: str | None


def durable(
    endpoint_id: str,
    durability: str,
    statuses: Iterable[TimelineStatus],
    sync_commit: SyncCommit | None,
) -> Durable:
    for st in statuses:
        if st.endpoint_id == endpoint_id:
            return Durable(
                endpoint_id=endpoint_id,
                durability=durability,
                streaming=st.streaming,
                sync_commit=sync_commit,
                lag_seconds=round(st.lag_seconds, 3),
                lag_bytes=st.lag_bytes,
                received=f"0-1-{st.last_seq}" if st.last_seq else None,
                archived=f"0-1-{st.shipped_seq}" if st.shipped_seq else None,
                error=st.error,
            )
    return Durable(
        endpoint_id=endpoint_id,
        durability=durability,
        streaming=False,
        sync_commit=sync_commit,
        lag_seconds=0.0,
        lag_bytes=0,
        received=None,
        archived=None,
        error=None,
    )


class SyncCommits:
    """Semi-sync of the running computes: set (:meth:`apply`) and read (:meth:`observe`)."""

    def __init__(
        self,
        *,
        driver: ComputeDriver,
        timeout_ms: int,
        read_timeout: float = READ_TIMEOUT,
        join_timeout: float = JOIN_TIMEOUT,
    ) -> None:
        self.driver = driver
        self.timeout_ms = timeout_ms
        self.read_timeout = read_timeout
        self.join_timeout = join_timeout
        # Whether each compute's server waits for the safekeeper, as last set here (by its
        # my.cnf at its start, or live); kept while it is frozen, for its thaw.
        self.configured: dict[str, bool] = {}
        # The last reading of each followed compute (the leader samples every 2 s).
        self.observed: dict[str, SyncCommit] = {}

    def started(self, endpoint_id: str, *, semi_sync: bool) -> None:
        """The compute just started with this setting in its my.cnf."""
        self.configured[endpoint_id] = semi_sync

    def forget(self, endpoint_id: str) -> None:
        """The compute is no longer followed: what was read of it is stale."""
        self.observed.pop(endpoint_id, None)

    async def read(self, endpoint_id: str, *, timeout: float | None = None) -> SemiSync:
        """The compute's semi-sync state from its server; ComputeError when it does not
        answer (within ``timeout``)."""
        try:
            results = await asyncio.wait_for(
                self.driver.execute(endpoint_id, READ_STATEMENTS), timeout or self.read_timeout
            )
        except TimeoutError as exc:
            raise ComputeError(f"compute {endpoint_id} did not answer in time") from exc
        return SemiSync.parse(results)

    async def observe(self, endpoint_id: str) -> SyncCommit | None:
        """Read the compute now and remember it; None when it does not answer."""
        try:
            state = (await self.read(endpoint_id)).sync_commit
        except SelkieError as exc:
            log.debug("cannot read semi-sync of %s: %s", endpoint_id, exc)
            self.observed.pop(endpoint_id, None)
            return None
        previous = self.observed.get(endpoint_id)
        if state == "fallen_back" and previous != state:
            log.warning(
                "endpoint %s: sync commits fell back to async (the safekeeper did not answer "
                "in time, or is not connected); they wait again once it has caught up",
                endpoint_id,
            )
        self.observed[endpoint_id] = state
        return state

    async def sample(self, endpoint_ids: Iterable[str]) -> None:
        for endpoint_id in list(endpoint_ids):
            await self.observe(endpoint_id)

    async def apply(
        self,
        endpoint_id: str,
        *,
        want: bool,
        follow: Follow,
        following: bool | None,
        strict: bool,
    ) -> None:
        """Make the compute wait for the safekeeper (``want``) or not, and the safekeeper
        follow it to match; ``following``: how the safekeeper follows it now (None: not).

        ``strict`` (a live change): ComputeError when the safekeeper does not join as a
        semi-sync replica in time (the server is then left not waiting) or the server
        does not do as asked. Otherwise (a start, a thaw, an adopted compute) nothing is
        raised for the server: it waits anyway, its commits falling back after the timeout
        until the safekeeper is there, as at any start; and when it cannot be asked, the
        safekeeper follows it all the same (the durability route shows what it does)."""
        followed = False

        async def follow_once(semi_sync: bool) -> None:
            nonlocal followed
            followed = True
            await follow(semi_sync)

        try:
            await self._apply(
                endpoint_id, want=want, follow=follow_once, following=following, strict=strict
            )
        except ComputeError as exc:
            if strict:
                raise
            log.warning(
                "endpoint %s: cannot set whether its commits wait for the safekeeper: %s",
                endpoint_id,
                exc.message,
            )
            self.configured.pop(endpoint_id, None)
            if not followed:
                await follow(want)

    async def _apply(
        self,
        endpoint_id: str,
        *,
        want: bool,
        follow: Follow,
        following: bool | None,
        strict: bool,
    ) -> None:
        # A live change goes by what the server says; a start or thaw by what was set.
        have = None if strict else self.configured.get(endpoint_id)
        if have is None:
            have = (await self.read(endpoint_id, timeout=self.join_timeout)).enabled
        if not want:
            if have:
                await self._execute(endpoint_id, DISABLE_STATEMENTS)
            self.configured[endpoint_id] = False
            if following is not False:
                await follow(False)
            if strict and (await self.read(endpoint_id, timeout=self.join_timeout)).enabled:
                raise ComputeError(f"compute {endpoint_id} still waits for the safekeeper")
            return
        if following is not True:
            await follow(True)
        if have:
            self.configured[endpoint_id] = True
            if strict:
                await self._joined(endpoint_id, self.join_timeout, strict=True)
            return
        # The safekeeper must be a semi-sync replica before the server waits for one.
        await self._joined(
            endpoint_id, self.join_timeout if strict else THAW_JOIN_TIMEOUT, strict=strict
        )
        await self._execute(endpoint_id, enable_statements(self.timeout_ms))
        self.configured[endpoint_id] = True

    async def _joined(self, endpoint_id: str, timeout: float, *, strict: bool) -> None:
        """Until the server counts a semi-sync replica; after ``timeout``, ComputeError
        (``strict``) or a warning."""
        deadline = time.monotonic() + timeout
        while True:
            state = await self.read(endpoint_id, timeout=self.join_timeout)
            if state.clients > 0:
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        message = (
            f"the safekeeper did not join compute {endpoint_id} as a semi-sync replica "
            f"within {timeout:g} s"
        )
        if strict:
            raise ComputeError(message + "; its commits do not wait for it")
        log.warning("%s; its commits fall back to async until it does", message)

    async def _execute(self, endpoint_id: str, statements: Sequence[str]) -> None:
        try:
            await asyncio.wait_for(self.driver.execute(endpoint_id, statements), self.join_timeout)
        except TimeoutError as exc:
            raise ComputeError(f"compute {endpoint_id} did not answer in time") from exc
