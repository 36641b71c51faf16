"""What the control plane asks of a safekeeper, in process or in a process of its own.

:class:`SafekeeperApi` is the whole surface: :class:`selkie.safekeeper.service.Safekeeper`
(in process, `selkie up` alone) and :class:`selkie.safekeeper.remote.RemoteSafekeeper`
(`selkie safekeeper` over HTTP) both satisfy it, and the control plane's history,
following and binlog wiring know the safekeeper by it only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from selkie.archive.layout import TimelineRef
from selkie.archive.segments import Record
from selkie.safekeeper.accounts import Credentials
from selkie.safekeeper.client import Address


@dataclass(frozen=True)
class TimelineStatus:
    project_id: str
    timeline_id: str
    endpoint_id: str | None
    last_seq: int
    shipped_seq: int
    lag_seconds: float
    lag_bytes: int
    streaming: bool
    semi_sync: bool
    error: str | None


class SafekeeperApi(Protocol):
    # Counters for /metrics (remote: as of the last :meth:`timelines`).
    segments_shipped: int
    bytes_shipped: int

    async def start(self) -> None:
        """Ready to follow computes (in process: recover the local logs, start shipping)."""

    async def stop(self) -> None:
        """Stop following (in process: ship what can be shipped first)."""

    async def attach(
        self,
        endpoint_id: str,
        ref: TimelineRef,
        address: Address,
        *,
        start_seq: int,
        semi_sync: bool = False,
        creds: Credentials | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Follow the compute of ``endpoint_id`` at ``address`` (its socket or TCP
        address) as its replication account, whose data began at ``start_seq`` of the
        timeline; ``prepare`` makes that account on the compute. Returns once the
        following is set up; the stream runs until :meth:`detach`."""

    async def detach(self, endpoint_id: str) -> None:
        """Stop following; every complete transaction received is durable on return."""

    async def catch_up(self, endpoint_id: str, seq: int, timeout: float) -> bool:
        """Until the stream has made the compute's transactions up to ``seq`` durable;
        False after ``timeout`` or when not following it."""

    async def drain(self, ref: TimelineRef, datadir: Path | None) -> int:
        """The compute of the timeline stopped: make everything durable and close the open
        segment; where ``datadir`` (the stopped compute's) is readable here, take from its
        binary log files what the stream had not delivered. Returns the last sequence
        number durable in the safekeeper."""

    async def archived_position(self, ref: TimelineRef) -> int:
        """The last sequence number the archive holds for the timeline (0: none)."""

    async def wait_archived(self, ref: TimelineRef, seq: int, timeout: float) -> bool:
        """Until the archive holds the timeline up to ``seq`` (False after ``timeout``)."""

    async def local_tail(self, ref: TimelineRef, after: int) -> tuple[bytes, list[Record]] | None:
        """(format description event, records) of the transactions after ``after`` the
        safekeeper holds locally, or None: what a restore needs beyond the archive."""

    async def appended_bytes(self, ref: TimelineRef) -> int:
        """Bytes of log appended to the timeline since the safekeeper opened it."""

    async def timelines(self) -> list[TimelineStatus]:
        """Every timeline the safekeeper holds, as it stands now."""

    def status(self) -> list[TimelineStatus]:
        """Every timeline as last known without waiting (in process: now; remote: as of
        the last :meth:`timelines`), for synchronous readers such as /metrics."""
