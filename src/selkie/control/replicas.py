"""Read-only computes: any number per branch, each on a datadir of its own, fed by the
safekeeper — never by the branch's primary, which they never wake.

A read-only compute's datadir (``<data dir>/replicas/<endpoint>``) is made from the
branch's history the first time (the newest base image and the log after it, as a restore
makes it: :mod:`selkie.storage.restore`), and kept across its suspends like any compute's.
Its server runs with ``read_only`` (a tenant's write gets MariaDB's own 1290: tenant roles
have no privilege that lifts it) and replicates, in parallel apply, from the safekeeper's
binlog server as the timeline's replication account: whatever the primary commits, while
it runs or from the archive after it stopped. A wake catches up to everything the
safekeeper holds before the compute is handed to its client (what was committed before the
wake is visible). Roles and databases arrive by replication (the primary's account changes
are in its log); a role made while the primary is suspended reaches its read-only computes
at the primary's next start.

A branch restored (a new timeline) leaves a read-only compute's datadir on the old one: its
next start makes it again from the new timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selkie.archive.binlog import domain_seq
from selkie.archive.layout import TimelineRef
from selkie.compute.base import ComputeDriver
from selkie.compute.mariadb import COMPUTE_SERVER_ID, Rows
from selkie.control.binlogs import Binlogs
from selkie.control.timelines import Timelines
from selkie.errors import ComputeError, Conflict
from selkie.safekeeper.api import SafekeeperApi
from selkie.storage.local import LocalStorage
from selkie.storage.replay import PARALLEL_MODE, PARALLEL_THREADS
from selkie.storage.restore import Restored, Target
from selkie.store.tables import TimelineRow

log = logging.getLogger(__name__)

# Server ids of read-only computes: above every id Selkie gives otherwise (the primary 1,
# restore servers 3, the safekeeper's replication connections).
SERVER_ID_BASE = 1000
# How long a wake waits for a read-only compute to catch up (seconds).
CATCH_UP_TIMEOUT = 30.0
# How long a status question may take (seconds).
STATUS_TIMEOUT = 5.0


def replica_server_id(endpoint_id: str) -> int:
    return SERVER_ID_BASE + zlib.crc32(endpoint_id.encode()) % 1_000_000


@dataclass(frozen=True)
class ReplicaStatus:
    """A read-only compute's replication, as its server says now."""

    endpoint_id: str
    running: bool
    # The last transaction it applied (None while suspended).
    replayed_lsn: str | None = None
    # MariaDB's Seconds_Behind_Master: 0 when it has applied everything it received.
    replication_lag_seconds: float | None = None
    replicating: bool = False
    last_error: str | None = None


class Replicas:
    def __init__(
        self,
        *,
        timelines: Timelines,
        binlogs: Binlogs,
        safekeeper: SafekeeperApi,
        storage: LocalStorage | None,
        driver: ComputeDriver,
        restore: Any,
    ) -> None:
        """``restore(row, target, staging)``: the history's restore of a timeline (its
        ancestors walked) into a staging directory."""
        self.timelines = timelines
        self.binlogs = binlogs
        self.safekeeper = safekeeper
        self.storage = storage
        self.driver = driver
        self.restore = restore
        # The last status of each running read-only compute (the leader samples them).
        self.sampled: dict[str, ReplicaStatus] = {}

    def _storage(self) -> LocalStorage:
        if self.storage is None:
            raise Conflict("read-only computes need local datadirs (not Kubernetes claims yet)")
        return self.storage

    def datadir(self, endpoint_id: str) -> Path:
        return self._storage().root.parent / "replicas" / endpoint_id

    async def prepare(self, branch_id: str, endpoint_id: str) -> tuple[Path, dict[str, str]]:
        """The read-only compute's datadir, on the branch's current timeline, and its
        server's options."""
        if self.binlogs.for_computes is None:
            raise Conflict(
                "read-only computes replicate from the embedded safekeeper's binlog server, "
                "which is off here (safekeeper_listen=off, or safekeeper_url)"
            )
        row = await asyncio.to_thread(self.timelines.current, branch_id)
        if row is None:
            raise Conflict(
                f"branch {branch_id} has no history yet: start its read_write endpoint once"
            )
        datadir = self.datadir(endpoint_id)
        if await asyncio.to_thread(LocalStorage.timeline_marker, datadir) != row.id:
            await self._make(datadir, row)
        options = {
            "server_id": str(replica_server_id(endpoint_id)),
            "read_only": "ON",
            # Its primary runs the events; their effects arrive by replication.
            "event_scheduler": "OFF",
            "skip_slave_start": "ON",
            "log_slave_updates": "OFF",
            "relay_log": "relay",
            "slave_parallel_threads": str(PARALLEL_THREADS),
            "slave_parallel_mode": PARALLEL_MODE,
            "slave_sql_verify_checksum": "ON",
            "slave_net_timeout": "10",
        }
        return datadir, options

    async def _make(self, datadir: Path, row: TimelineRow) -> None:
        """The datadir made anew from the timeline's history (everything it holds)."""
        log.info("making read-only datadir %s from timeline %s", datadir.name, row.id)
        staging = self._storage().staging_dir(datadir.name)
        try:
            restored: Restored = await self.restore(row, Target(), staging)
            await asyncio.to_thread(LocalStorage.mark_timeline, staging, row.id)
            await asyncio.to_thread(_swap, datadir, staging)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        log.info("read-only datadir %s made at 0-1-%d", datadir.name, restored.seq)

    async def attach(self, endpoint_id: str, branch_id: str) -> int:
        """Replicate the running read-only compute from the safekeeper, and wait until it
        has everything the safekeeper holds; returns that position."""
        row = await asyncio.to_thread(self.timelines.current, branch_id)
        address = self.binlogs.for_computes
        if row is None or address is None:
            raise ComputeError(f"read-only compute {endpoint_id}: its branch has no history")
        creds = self.binlogs.credentials(row.id)
        host, port = address
        target = await self._durable_position(TimelineRef(row.project_id, row.id), row)
        # One admin connection (the wake's client waits on it): on its first start the data
        # holds the timeline up to the restore's position (its binary log's), from then on
        # it goes on from what it applied.
        statements = [
            "STOP SLAVE",
            "SET GLOBAL gtid_slave_pos = "
            "IF(@@gtid_slave_pos = '', @@gtid_binlog_pos, @@gtid_slave_pos)",
            f"CHANGE MASTER TO MASTER_HOST = '{host}', MASTER_PORT = {port}, "
            f"MASTER_USER = '{creds.user}', MASTER_PASSWORD = '{creds.password}', "
            "MASTER_USE_GTID = slave_pos, MASTER_HEARTBEAT_PERIOD = 1, "
            "MASTER_CONNECT_RETRY = 1",
            "START SLAVE",
            f"SELECT MASTER_GTID_WAIT('0-{COMPUTE_SERVER_ID}-{target}', {CATCH_UP_TIMEOUT})"
            if target
            else "SELECT 0",
        ]
        results = await self.driver.execute(endpoint_id, statements, timeout=CATCH_UP_TIMEOUT + 10)
        ((done,),) = results[-1]
        if str(done) != "0":
            raise ComputeError(
                f"read-only compute {endpoint_id} did not catch up to 0-1-{target} in "
                f"{CATCH_UP_TIMEOUT:.0f}s: {await self.status_text(endpoint_id)}"
            )
        return target

    async def _durable_position(self, ref: TimelineRef, row: TimelineRow) -> int:
        """The last transaction of the timeline the safekeeper holds."""
        last = row.last_seq
        with contextlib.suppress(Exception):
            for st in await self.safekeeper.timelines():
                if st.timeline_id == ref.timeline_id:
                    last = max(last, st.last_seq)
        return last

    async def status_text(self, endpoint_id: str) -> str:
        """What the replication threads say (their last errors)."""
        try:
            rows = (await self.driver.execute(endpoint_id, ["SHOW SLAVE STATUS"]))[0]
        except ComputeError as exc:
            return exc.message
        return repr(rows[0][:3]) if rows else "replication is not configured"

    async def status(self, endpoint_id: str, *, timeout: float = STATUS_TIMEOUT) -> ReplicaStatus:
        info = await self.driver.inspect(endpoint_id)
        if not info.running:
            return ReplicaStatus(endpoint_id, running=False)
        try:
            # Bounded: a compute held still must not hold up the leader's tick.
            slave, ((pos,),) = await self.driver.execute(
                endpoint_id, ["SHOW SLAVE STATUS", "SELECT @@gtid_slave_pos"], timeout=timeout
            )
        except ComputeError as exc:
            return ReplicaStatus(endpoint_id, running=True, last_error=exc.message)
        row = slave.named()[0] if isinstance(slave, Rows) and slave else {}
        lag = row.get("Seconds_Behind_Master")
        replicating = row.get("Slave_IO_Running") == "Yes" and row.get("Slave_SQL_Running") == "Yes"
        seq = domain_seq(pos)
        status = ReplicaStatus(
            endpoint_id,
            running=True,
            replayed_lsn=f"0-{COMPUTE_SERVER_ID}-{seq}" if seq else None,
            replication_lag_seconds=float(lag) if lag is not None else None,
            replicating=replicating,
            last_error=str(row.get("Last_SQL_Error") or row.get("Last_IO_Error") or "") or None,
        )
        self.sampled[endpoint_id] = status
        return status

    async def sample(self, endpoint_ids: list[str]) -> None:
        """The running read-only computes' status, kept for /metrics (all at once, each
        bounded)."""

        async def one(endpoint_id: str) -> None:
            with contextlib.suppress(Exception):
                await self.status(endpoint_id)

        await asyncio.gather(*(one(e) for e in endpoint_ids))
        for gone in set(self.sampled) - set(endpoint_ids):
            del self.sampled[gone]

    async def forget(self, endpoint_id: str) -> None:
        """The endpoint is deleted: its datadir goes (nothing where it had none)."""
        self.sampled.pop(endpoint_id, None)
        if self.storage is not None:
            await asyncio.to_thread(shutil.rmtree, self.datadir(endpoint_id), True)


def _swap(datadir: Path, staging: Path) -> None:
    datadir.parent.mkdir(parents=True, exist_ok=True)
    datadir.parent.chmod(0o711)  # computes pass to their own datadir, never list others
    if datadir.exists():
        shutil.rmtree(datadir)
    staging.rename(datadir)
