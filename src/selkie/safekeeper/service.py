"""The safekeeper: keeps every committed transaction of every active compute durable, first
in its own fsynced log, then in the archive.

- :meth:`Safekeeper.attach` follows a running compute's binary log as a replica does
  (:mod:`selkie.safekeeper.client`), appends each committed transaction to the timeline's
  :class:`~selkie.safekeeper.log.TimelineLog` and fsyncs in groups; with ``semi_sync`` it
  acknowledges each commit the compute waits for only once it is fsynced here. A lost
  connection is retried while the compute runs.
- :meth:`Safekeeper.drain` reads what a stopped compute left in its binary log files that
  the stream had not delivered (a shutdown ends the stream at once), so a clean suspend
  leaves nothing behind.
- The shipper uploads new transactions to the archive every ``ship_interval`` seconds, per
  local segment, and once a segment is closed replaces the pieces by one object and forgets
  the local file. An archive that cannot be reached only makes the lag grow; nothing local
  is deleted before the archive holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from selkie.archive import Archive, segments
from selkie.archive.binlog import (
    DOMAIN,
    BinlogError,
    EventType,
    Gtid,
    Transaction,
    TransactionAssembler,
    file_transactions,
)
from selkie.archive.layout import TimelineRef
from selkie.archive.local import private_dir
from selkie.archive.segments import Record
from selkie.errors import SelkieError
from selkie.mysql.wire import ProtocolError
from selkie.safekeeper.accounts import Credentials
from selkie.safekeeper.api import TimelineStatus
from selkie.safekeeper.client import Address, ReplicaConnection, ReplicationError
from selkie.safekeeper.log import LogGap, TimelineLog
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

# The server id the safekeeper registers with (computes are server 1).
SAFEKEEPER_SERVER_ID = 2
COMPUTE_SERVER_ID = 1
# durability=async: transactions that arrive within this many seconds share one fsync.
ASYNC_BATCH = 0.01
BINLOG_INDEX = "binlog.index"
ACCESS_DENIED = 1045


@dataclass
class _Follow:
    endpoint_id: str
    ref: TimelineRef
    address: Address
    semi_sync: bool
    creds: Credentials | None = None
    # Makes the replication account on the compute (a login it refused: a new datadir).
    prepare: Callable[[], Awaitable[None]] | None = None
    task: asyncio.Task[None] | None = None
    connected: bool = False
    error: str | None = None
    stopped: bool = False


def now_us() -> int:
    return time.time_ns() // 1000


class Safekeeper:
    def __init__(
        self,
        *,
        root: Path,
        archive: Archive,
        ship_interval: float = 0.2,
        clock_us: Callable[[], int] = now_us,
        note_statements: Callable[[str, int], None] | None = None,
    ) -> None:
        self.root = root
        self.archive = archive
        self.ship_interval = ship_interval
        self.clock_us = clock_us
        # Told how many statements the safekeeper ran on a compute (not client activity).
        self.note_statements = note_statements
        self.logs: dict[str, TimelineLog] = {}
        self._follows: dict[str, _Follow] = {}
        self._open_lock = asyncio.Lock()
        self._shipper: asyncio.Task[None] | None = None
        self._shipped = asyncio.Condition()
        self.ship_error: str | None = None
        # Counters for /metrics.
        self.segments_shipped = 0
        self.bytes_shipped = 0
        # Seconds from the safekeeper having a transaction to the archive holding it, for
        # the latest transactions shipped (benchmarks, diagnostics).
        self.archive_delays: deque[float] = deque(maxlen=100_000)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the logs a previous run left (their tails get archived) and start
        shipping."""
        private_dir(self.root)
        for path in await asyncio.to_thread(lambda: sorted(self.root.iterdir())):
            ref = TimelineLog.read_meta(path)
            if ref is not None and any(p.suffix in (".seg", ".open") for p in path.iterdir()):
                await self.timeline(ref)
        self._shipper = spawn(self._ship_forever(), name="safekeeper-shipper")

    async def stop(self, *, ship_timeout: float = 5.0) -> None:
        for endpoint_id in list(self._follows):
            await self.detach(endpoint_id)
        await cancel(self._shipper)
        self._shipper = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ship_once(), ship_timeout)

    async def timeline(self, ref: TimelineRef) -> TimelineLog:
        tl = self.logs.get(ref.timeline_id)
        if tl is not None:
            return tl
        async with self._open_lock:
            tl = self.logs.get(ref.timeline_id)
            if tl is None:
                tl = await asyncio.to_thread(TimelineLog.open, self.root, ref)
                self.logs[ref.timeline_id] = tl
            return tl

    # --- following a compute ---------------------------------------------------------------

    async def archived_position(self, ref: TimelineRef) -> int:
        """The last sequence number the archive holds for the timeline (0: none)."""
        last = 0
        for obj in await self.archive.list(ref.wal_prefix):
            rng = segments.parse_object_name(obj.key.rsplit("/", 1)[1])
            if rng is not None:
                last = max(last, rng[1])
        return last

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
        """Follow the compute of ``endpoint_id`` (reached at ``address``: its unix socket
        or TCP address, as ``creds``' account; ``prepare`` makes that account there when
        the compute refuses the login), whose data began at ``start_seq`` of the
        timeline. Returns at once; the stream runs in the background until
        :meth:`detach`."""
        await self.detach(endpoint_id)
        tl = await self.timeline(ref)
        if not tl.segments and not tl.has_pending and tl.last_seq < start_seq:
            tl.start_at(start_seq)
        if not tl.segments and not tl.has_pending and tl.shipped_seq == 0:
            # A log new here (this machine's safekeeper dir is new): start where the
            # archive stops, not where the timeline began.
            try:
                archived = await self.archived_position(ref)
            except SelkieError as exc:
                log.warning("timeline %s: %s; following from its start", ref.timeline_id, exc)
                archived = 0
            if archived > tl.last_seq:
                tl.start_at(archived, archived=True)
        follow = _Follow(endpoint_id, ref, address, semi_sync, creds, prepare)
        follow.task = spawn(self._follow_forever(follow), name=f"safekeeper-{endpoint_id}")
        self._follows[endpoint_id] = follow

    async def detach(self, endpoint_id: str) -> None:
        """Stop following the compute; every complete transaction received is durable
        when this returns."""
        follow = self._follows.pop(endpoint_id, None)
        if follow is None:
            return
        follow.stopped = True
        await cancel(follow.task)
        tl = self.logs.get(follow.ref.timeline_id)
        if tl is not None:
            await tl.flush()

    async def _follow_forever(self, follow: _Follow) -> None:
        delay = 0.05
        while not follow.stopped:
            try:
                await self._follow(follow)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except ReplicationError as exc:
                if exc.code == ACCESS_DENIED and follow.prepare is not None:
                    # A datadir the account was never made in (a new branch, a restore).
                    try:
                        await follow.prepare()
                        continue
                    except SelkieError as prep:
                        exc = ReplicationError(f"{exc}; making the account: {prep.message}")
                if str(exc) != follow.error:
                    log.warning("safekeeper: %s: %s", follow.endpoint_id, exc)
                follow.error = str(exc)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                # The compute is not (or no longer) there: it stopped, or is restarting.
                log.info("safekeeper: %s: %s", follow.endpoint_id, exc)
                follow.error = f"cannot reach the compute: {exc.strerror}"
            except (
                OSError,
                EOFError,
                ProtocolError,
                BinlogError,
                LogGap,
                SelkieError,
            ) as exc:
                message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                if message != follow.error:
                    log.warning("safekeeper: %s: %s", follow.endpoint_id, message)
                follow.error = message
            follow.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _follow(self, follow: _Follow) -> None:
        tl = await self.timeline(follow.ref)
        after = tl.next_seq - 1
        conn = await ReplicaConnection.open(follow.address, follow.creds)
        acks: deque[tuple[int, str, int]] = deque()
        wake = asyncio.Event()
        flusher = spawn(
            self._flusher(tl, conn, wake, acks, batch=0.0 if follow.semi_sync else ASYNC_BATCH),
            name=f"flush-{follow.endpoint_id}",
        )
        try:
            await conn.start_dump(
                after=Gtid(DOMAIN, COMPUTE_SERVER_ID, after) if after > 0 else None,
                server_id=SAFEKEEPER_SERVER_ID,
                semi_sync=follow.semi_sync,
            )
            follow.connected, follow.error = True, None
            if self.note_statements is not None:
                self.note_statements(follow.endpoint_id, conn.commands)
            assembler = TransactionAssembler(checksum=conn.checksum)
            async for received in conn.events():
                event = received.event
                if tl.fde is None and received.type == EventType.FORMAT_DESCRIPTION:
                    tl.fde = event
                txn = assembler.feed(event, self.clock_us())
                if txn is None:
                    if received.ack_requested:
                        # Asked for outside a transaction's end: nothing new to make durable.
                        acks.append((tl.next_seq - 1, conn.binlog_file, conn.binlog_pos))
                        wake.set()
                    continue
                if txn.gtid.seq < tl.next_seq:
                    continue  # sent again after a reconnect: already here
                self._append(tl, txn)
                tl.binlog_end = (conn.binlog_file, conn.binlog_pos)
                if received.ack_requested:
                    acks.append((txn.gtid.seq, conn.binlog_file, conn.binlog_pos))
                wake.set()
        finally:
            await cancel(flusher)
            await tl.flush()
            conn.close()

    @staticmethod
    def _append(tl: TimelineLog, txn: Transaction) -> None:
        if txn.gtid.domain != DOMAIN:
            raise BinlogError(
                f"transaction {txn.gtid} is in GTID domain {txn.gtid.domain}; computes write "
                f"domain {DOMAIN} only"
            )
        tl.append(Record.of(txn))

    async def _flusher(
        self,
        tl: TimelineLog,
        conn: ReplicaConnection,
        wake: asyncio.Event,
        acks: deque[tuple[int, str, int]],
        *,
        batch: float,
    ) -> None:
        while True:
            await wake.wait()
            if batch:
                # No client waits for this fsync: let a few milliseconds of transactions
                # share it (each flush costs a thread hop and an fsync).
                await asyncio.sleep(batch)
            wake.clear()
            durable = await tl.flush()
            best = None
            while acks and acks[0][0] <= durable:
                best = acks.popleft()
            if best is not None:
                await conn.acknowledge(best[1], best[2])

    # --- before and after a stop -----------------------------------------------------------

    async def catch_up(self, endpoint_id: str, seq: int, timeout: float) -> bool:
        """Until the stream from the compute of ``endpoint_id`` has made its transactions
        up to ``seq`` durable here; False after ``timeout`` (or when not following it)."""
        follow = self._follows.get(endpoint_id)
        if follow is None:
            return False
        tl = await self.timeline(follow.ref)
        deadline = time.monotonic() + timeout
        while tl.last_seq < seq:
            left = deadline - time.monotonic()
            if left <= 0 or not await tl.wait_durable(tl.last_seq, left):
                return False
        return True

    async def drain(self, ref: TimelineRef, datadir: Path | None) -> int:
        """Take from a stopped compute's binary log files every transaction the stream had
        not delivered, make them durable and close the open segment. Returns the last
        sequence number of the timeline now durable here. Without ``datadir`` (the
        compute's files are on another host) it only makes durable and closes."""
        tl = await self.timeline(ref)
        if datadir is None:
            tl.binlog_end = None
            return await tl.flush(close=True)
        after = tl.next_seq - 1
        fde, txns = await asyncio.to_thread(_read_binlog_files, datadir, after, tl.binlog_end)
        tl.binlog_end = None
        if tl.fde is None:
            tl.fde = fde
        floor = tl.unshipped[-1][1] if tl.unshipped else 0
        late = [t for t in txns if t.gtid.seq >= tl.next_seq]
        if late:
            log.warning(
                "timeline %s: transactions %d..%d were taken from the stopped compute's files "
                "(its stream had not delivered them)",
                ref.timeline_id,
                late[0].gtid.seq,
                late[-1].gtid.seq,
            )
        for txn in late:
            # Not seen live: its binlog timestamp (the second it began) stands for the
            # moment it committed, so a restore to any later time includes it.
            floor = max(floor, txn.timestamp * 1_000_000)
            self._append(tl, Transaction(txn.gtid, txn.timestamp, floor, txn.events))
        return await tl.flush(close=True)

    async def local_tail(self, ref: TimelineRef, after: int) -> tuple[bytes, list[Record]] | None:
        """The transactions after ``after`` this safekeeper holds locally (for a restore
        that must not miss what the archive does not hold yet)."""
        tl = await self.timeline(ref)
        fde, records = tl.fde, []
        for _seg, seg_fde, recs, _end in await tl.read_after(after, whole=True):
            fde = fde or seg_fde
            records.extend(recs)
        return (fde, records) if fde is not None and records else None

    # --- shipping --------------------------------------------------------------------------

    async def _ship_forever(self) -> None:
        delay = self.ship_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.ship_once()
                self.ship_error = None
                delay = self.ship_interval
            except SelkieError as exc:
                if exc.message != self.ship_error:
                    log.warning("safekeeper: archive: %s (retrying)", exc.message)
                self.ship_error = exc.message
                delay = min(max(delay * 2, 0.5), 10.0)

    async def ship_once(self) -> int:
        """Upload what the archive does not hold yet; returns the objects written."""
        written = 0
        for tl in list(self.logs.values()):
            if tl.last_seq > tl.shipped_seq:
                for seg, fde, records, end in await tl.read_after(tl.shipped_seq):
                    if not records:
                        continue
                    data = segments.compress(segments.encode(fde, records))
                    name = segments.object_name(records[0].seq, records[-1].seq)
                    await self.archive.put(tl.ref.wal_prefix + name, data)
                    await asyncio.to_thread(tl.mark_shipped, records[-1].seq, seg, end)
                    done_us = self.clock_us()
                    self.archive_delays.extend((done_us - r.received_us) / 1e6 for r in records)
                    self.segments_shipped += 1
                    self.bytes_shipped += len(data)
                    written += 1
            for seg in [s for s in tl.segments if s.closed and s.last <= tl.shipped_seq]:
                written += await self._compact(tl, seg)
        if written:
            async with self._shipped:
                self._shipped.notify_all()
        return written

    async def _compact(self, tl: TimelineLog, seg: object) -> int:
        """A closed segment the archive holds in pieces becomes one object; then the local
        file goes."""
        from selkie.safekeeper.log import LocalSegment

        assert isinstance(seg, LocalSegment)
        whole = (seg.first, seg.last)
        pieces = []
        have_whole = False
        for obj in await self.archive.list(tl.ref.wal_prefix):
            rng = segments.parse_object_name(obj.key.rsplit("/", 1)[1])
            if rng is None or not (seg.first <= rng[0] and rng[1] <= seg.last):
                continue
            if rng == whole:
                have_whole = True
            else:
                pieces.append(obj.key)
        written = 0
        if not have_whole:
            ((_, fde, records, _end),) = [
                x for x in await tl.read_after(seg.first - 1, whole=True) if x[0] is seg
            ]
            data = segments.compress(segments.encode(fde, records))
            await self.archive.put(tl.ref.wal_prefix + segments.object_name(*whole), data)
            written = 1
        await self.archive.delete(pieces)
        await asyncio.to_thread(tl.forget, seg)
        return written

    async def wait_archived(self, ref: TimelineRef, seq: int, timeout: float) -> bool:
        """Until the archive holds the timeline up to ``seq`` (False after ``timeout``)."""
        tl = await self.timeline(ref)
        deadline = time.monotonic() + timeout
        async with self._shipped:
            while tl.shipped_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._shipped.wait(), left)
        return True

    # --- observation -----------------------------------------------------------------------

    async def appended_bytes(self, ref: TimelineRef) -> int:
        tl = self.logs.get(ref.timeline_id)
        return tl.appended_bytes if tl is not None else 0

    async def timelines(self) -> list[TimelineStatus]:
        return self.status()

    async def find_timeline(self, timeline_id: str) -> TimelineRef | None:
        """The timeline of that id this safekeeper holds or held a log of (its project
        too), or None."""
        tl = self.logs.get(timeline_id)
        if tl is not None:
            return tl.ref
        if not timeline_id or "/" in timeline_id or timeline_id.startswith("."):
            return None
        return await asyncio.to_thread(TimelineLog.read_meta, self.root / timeline_id)

    def status(self) -> list[TimelineStatus]:
        by_timeline = {f.ref.timeline_id: f for f in self._follows.values()}
        now = self.clock_us()
        out = []
        for tl in self.logs.values():
            follow = by_timeline.get(tl.ref.timeline_id)
            lag_s, lag_b = tl.lag(now)
            out.append(
                TimelineStatus(
                    project_id=tl.ref.project_id,
                    timeline_id=tl.ref.timeline_id,
                    endpoint_id=follow.endpoint_id if follow else None,
                    last_seq=tl.last_seq,
                    shipped_seq=tl.shipped_seq,
                    lag_seconds=lag_s,
                    lag_bytes=lag_b,
                    streaming=bool(follow and follow.connected),
                    semi_sync=bool(follow and follow.semi_sync),
                    error=follow.error if follow else None,
                )
            )
        return out


def _read_binlog_files(
    datadir: Path, after: int, resume: tuple[str, int] | None = None
) -> tuple[bytes | None, list[Transaction]]:
    """The complete transactions after ``after`` in a datadir's binary log files; from
    ``resume`` (file, position where the stream's last transaction ended) when given, so a
    drain reads only what the stream had not delivered."""
    index = datadir / BINLOG_INDEX
    if not index.exists():
        return None, []
    names = [Path(line).name for line in index.read_text().split()]
    offsets = dict.fromkeys(names, 0)
    if resume is not None and resume[0] in offsets:
        names = names[names.index(resume[0]) :]
        offsets[resume[0]] = resume[1]
    fde: bytes | None = None
    out: list[Transaction] = []
    for name in names:
        path = datadir / name
        if not path.exists():
            continue  # purged
        file_fde, txns = file_transactions(path.read_bytes(), after_seq=after, offset=offsets[name])
        fde = fde or file_fde
        out.extend(txns)
    return fde, out
