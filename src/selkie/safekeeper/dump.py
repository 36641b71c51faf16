"""A binlog dump: one timeline's durable transactions sent from a position, in order, as
MariaDB's dump thread sends a binlog, then new ones as they become durable.

:class:`TimelineReader` finds the transactions: the archive's log objects for what this
safekeeper no longer holds (or never did), the local log for the rest, and
:meth:`~selkie.safekeeper.log.TimelineLog.wait_durable` for what comes next. Only durable
transactions are ever read (the local log's records are read up to its last flush).
:class:`Dump` lays them out in virtual binlog files (:mod:`selkie.safekeeper.stream`) and
writes the events to the replica, with heartbeats while there is nothing to send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from selkie.archive import Archive, segments
from selkie.archive.binlog import (
    CHECKSUM_OFF,
    EventType,
    fde_checksum_alg,
    split_events,
)
from selkie.archive.layout import TimelineRef, parse_base_name
from selkie.archive.segments import Record, SegmentError
from selkie.errors import ArchiveError, ObjectMissing
from selkie.safekeeper.log import TimelineLog
from selkie.safekeeper.service import Safekeeper
from selkie.safekeeper.stream import (
    BINLOG_HEADER_SIZE,
    MAX_FILE_BYTES,
    BadPosition,
    VirtualFile,
    fde_key,
    file_name,
    parse_file_name,
)

log = logging.getLogger(__name__)

# COM_BINLOG_DUMP flags.
BINLOG_DUMP_NON_BLOCK = 0x01
BINLOG_SEND_ANNOTATE_ROWS_EVENT = 0x02
# @mariadb_slave_capability: what a replica understands (MariaDB's log_event.h).
MARIA_SLAVE_CAPABILITY_GTID = 4


class DumpRefused(Exception):
    """The dump cannot be served. ``fatal``: the replica must not retry as it is (MariaDB's
    ER_MASTER_FATAL_ERROR_READING_BINLOG); otherwise a passing failure (the archive is
    unreachable) after which a replica reconnects."""

    def __init__(self, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Extent:
    """What a timeline's history holds: transactions ``first`` to ``end`` (``first`` is
    ``end + 1`` when it holds none)."""

    first: int
    end: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive durable transactions and the format description event they came with."""

    fde: bytes
    records: list[Record]


class TimelineReader:
    """One timeline's durable transactions, from the archive and this safekeeper's log."""

    def __init__(self, archive: Archive, log: TimelineLog) -> None:
        self.archive = archive
        self.log = log
        self.ref = log.ref
        self._objects: dict[tuple[int, int], str] | None = None

    async def _ranges(self, *, refresh: bool) -> dict[tuple[int, int], str]:
        if self._objects is None or refresh:
            objects = {}
            for obj in await self.archive.list(self.ref.wal_prefix):
                rng = segments.parse_object_name(obj.key.rsplit("/", 1)[1])
                if rng is not None:
                    objects[rng] = obj.key
            self._objects = objects
        return self._objects

    async def extent(self) -> Extent:
        """The transactions held. The end also counts base images: a timeline that began
        at position N (a branch, a restore) has reached N before its first transaction."""
        objects = await self._ranges(refresh=True)
        images = [
            parse_base_name(obj.key.rsplit("/", 1)[1])
            for obj in await self.archive.list(self.ref.base_prefix)
        ]
        local = list(self.log.segments)
        end = max([self.log.last_seq, *(r[1] for r in objects), *(i[0] for i in images if i)])
        first = min([r[0] for r in objects] + [s.first for s in local], default=end + 1)
        return Extent(first=min(first, end + 1), end=end)

    async def read(self, after: int) -> Batch | None:
        """Durable transactions from ``after + 1`` on (at least one, in order), or None when
        none is durable yet. DumpRefused when ``after + 1`` is held nowhere."""
        # Where the local log stood before looking: a transaction that becomes durable
        # while the archive is asked is read by the next call, not taken for a gap.
        durable = self.log.last_seq
        if after < durable:
            # Past what the archive holds, the unshipped part of the local segments has it.
            whole = after < self.log.shipped_seq
            batch = _leading(await self.log.read_after(after, whole=whole), after)
            if batch is None and not whole:
                batch = _leading(await self.log.read_after(after, whole=True), after)
            if batch is not None:
                return batch
        for refresh in (False, True):
            key = _covering(await self._ranges(refresh=refresh), after)
            if key is None:
                continue
            try:
                data = await self.archive.get(key)
            except ObjectMissing:
                continue  # replaced meanwhile (pieces compacted into one object)
            try:
                fde, records, _ = segments.decode(segments.decompress(data))
            except SegmentError as exc:
                raise DumpRefused(f"archive object {key} is corrupt: {exc}") from exc
            batch = _leading([(None, fde, records, 0)], after)
            if batch is None:
                raise DumpRefused(f"archive object {key} does not hold transaction {after + 1}")
            return batch
        ends = [durable, *(r[1] for r in await self._ranges(refresh=False))]
        if after >= max(ends):
            return None
        raise DumpRefused(
            f"the history of timeline {self.ref.timeline_id} misses transaction "
            f"0-1-{after + 1}: it is neither in the archive nor in the safekeeper"
        )

    async def fde(self) -> bytes | None:
        """The newest format description event known, for a dump that starts at the end."""
        if self.log.fde is not None:
            return self.log.fde
        objects = await self._ranges(refresh=False)
        if not objects:
            return None
        key = objects[max(objects, key=lambda r: r[1])]
        fde, _ = segments.decode_header(segments.decompress(await self.archive.get(key)))
        return fde

    async def wait(self, after: int, timeout: float | None) -> bool:
        """Until a transaction after ``after`` is durable (False after ``timeout``)."""
        return await self.log.wait_durable(after, timeout)


def _leading(parts: Sequence[tuple[object, bytes, list[Record], int]], after: int) -> Batch | None:
    """From segments read in order, the run of records that begins right after ``after``
    (and shares its segment's format description event)."""
    out: list[Record] = []
    fde = b""
    for _seg, seg_fde, records, _end in parts:
        records = [r for r in records if r.seq > after]
        if not records:
            continue
        expected = out[-1].seq + 1 if out else after + 1
        if records[0].seq != expected or (out and seg_fde != fde):
            break
        fde = seg_fde
        out.extend(records)
    return Batch(fde, out) if out else None


def _covering(objects: dict[tuple[int, int], str], after: int) -> str | None:
    candidates = [r for r in objects if r[0] <= after + 1 <= r[1]]
    return objects[max(candidates, key=lambda r: r[1])] if candidates else None


class HistorySource:
    """Where dumps read timelines: the archive and this process's safekeeper."""

    def __init__(self, *, archive: Archive, safekeeper: Safekeeper) -> None:
        self.archive = archive
        self.safekeeper = safekeeper

    async def reader(self, ref: TimelineRef) -> TimelineReader:
        return TimelineReader(self.archive, await self.safekeeper.timeline(ref))


@dataclass(frozen=True, kw_only=True)
class DumpRequest:
    """What a replica asked for: COM_BINLOG_DUMP and the user variables set before it."""

    gtid_after: int | None  # GTID mode: start after this sequence number
    file: str  # file mode: a virtual file ('' = the first one held) …
    position: int  # … and a byte position in it
    non_blocking: bool  # stop at the end instead of waiting (mariadb-binlog)
    annotate: bool  # send ANNOTATE_ROWS events
    heartbeat: float  # seconds between heartbeats while idle; 0: none
    checksum_aware: bool  # the replica set @master_binlog_checksum
    rotate_checksum: bool  # … to CRC32 (the artificial ROTATE carries one)
    capability: int  # @mariadb_slave_capability
    until: int | None = None  # START SLAVE UNTIL master_gtid_pos


class EventSink(Protocol):
    """Where a dump's events go (the replica's connection)."""

    def write(self, event: bytes) -> None: ...

    async def drain(self) -> None: ...


class Dump:
    def __init__(
        self,
        reader: TimelineReader,
        request: DumpRequest,
        sink: EventSink,
        *,
        server_id: int,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.reader = reader
        self.request = request
        self.sink = sink
        self.server_id = server_id
        self.max_file_bytes = max_file_bytes
        # The last transaction sent (or skipped as before the start).
        self.after = 0

    async def run(self) -> None:
        """Send until the replica goes (cancelled), or until the end with a non-blocking
        request. DumpRefused when the position is not in the history."""
        req = self.request
        if req.capability < MARIA_SLAVE_CAPABILITY_GTID:
            raise DumpRefused(
                "the Selkie binlog server needs a replica that understands MariaDB GTIDs "
                f"(@mariadb_slave_capability >= {MARIA_SLAVE_CAPABILITY_GTID})"
            )
        first, start = await self._start()
        self.after = first - 1
        batch = await self.reader.read(self.after)
        fde = batch.fde if batch is not None else await self.reader.fde()
        while fde is None:
            # Nothing was ever written on this timeline: the first transaction brings it.
            await self.reader.wait(self.after, None)
            batch = await self.reader.read(self.after)
            fde = batch.fde if batch is not None else None
        if not req.checksum_aware and fde_checksum_alg(fde) != CHECKSUM_OFF:
            raise DumpRefused(
                "Slave can not handle replication events with the checksum that master is "
                "configured to log (set @master_binlog_checksum first)"
            )
        vf = await self._open(first, fde, start, rotate_checksum=req.rotate_checksum)
        while True:
            if req.until is not None and self.after >= req.until and vf.reached:
                self.sink.write(vf.until_reached(self.after))
                await self.sink.drain()
                return
            if batch is None:
                batch = await self.reader.read(self.after)
            if batch is None:
                if not vf.reached:
                    raise DumpRefused(
                        "Client requested master to start replication from impossible "
                        f"position {vf.start} in '{vf.name}': the file ends at {vf.pos}"
                    )
                await self.sink.drain()
                if req.non_blocking:
                    return
                if not await self.reader.wait(self.after, req.heartbeat or None):
                    self.sink.write(vf.heartbeat())
                continue
            if vf.reached and fde_key(batch.fde) != fde_key(vf.fde):
                # Another server version wrote what follows: a new file, a new format.
                vf = await self._rotate(vf, batch.fde)
            for record in batch.records:
                self._send(vf, record)
                self.after = record.seq
                if req.until is not None and self.after >= req.until:
                    break
                if vf.reached and vf.pos >= self.max_file_bytes:
                    vf = await self._rotate(vf, vf.fde)
                await self.sink.drain()
            batch = None

    async def _start(self) -> tuple[int, int]:
        """The first transaction of the virtual file to send, and the byte position in it
        to start at."""
        req = self.request
        extent = await self.reader.extent()
        tl = self.reader.ref.timeline_id
        if req.gtid_after is not None:
            first, start = req.gtid_after + 1, BINLOG_HEADER_SIZE
            what = f"GTID 0-1-{req.gtid_after}"
        else:
            named = parse_file_name(req.file) if req.file else extent.first
            if named is None:
                raise DumpRefused(
                    f"Could not find first log file name in binary log index file: there is "
                    f"no {req.file!r} (the timeline's files are {file_name(extent.first)} "
                    "and later)"
                )
            first, start = named, req.position
            what = f"binlog file {file_name(first)}"
        if first - 1 > extent.end:
            raise DumpRefused(
                f"Error: connecting slave requested to start from {what}, which is not in "
                f"the master's binlog: timeline {tl} ends at 0-1-{extent.end}"
            )
        if first < extent.first:
            raise DumpRefused(
                f"Could not find {what} in any binlog files: the slave state is too old, the "
                f"history of timeline {tl} held begins after 0-1-{extent.first - 1}"
            )
        return first, start

    async def _open(
        self, first: int, fde: bytes, start: int, *, rotate_checksum: bool
    ) -> VirtualFile:
        try:
            vf = VirtualFile(
                first=first,
                fde=fde,
                server_id=self.server_id,
                start=start,
                rotate_checksum=rotate_checksum,
            )
            for event in vf.opening(timestamp=int(time.time())):
                self.sink.write(event)
        except BadPosition as exc:
            raise DumpRefused(
                f"Client requested master to start replication from impossible position: {exc}"
            ) from exc
        await self.sink.drain()
        return vf

    async def _rotate(self, vf: VirtualFile, fde: bytes) -> VirtualFile:
        self.sink.write(vf.rotate(self.after + 1, timestamp=int(time.time())))
        # The replica knows the format by now: the next artificial ROTATE_EVENT carries a
        # checksum as the events do (MariaDB's does too).
        return await self._open(
            self.after + 1, fde, BINLOG_HEADER_SIZE, rotate_checksum=vf.checksum
        )

    def _send(self, vf: VirtualFile, record: Record) -> None:
        try:
            for event in split_events(record.events):
                placed = vf.place(event)
                if placed is None:
                    continue
                if event[4] == EventType.ANNOTATE_ROWS and not self.request.annotate:
                    continue  # a replica that tolerates holes did not ask for them
                self.sink.write(placed)
        except BadPosition as exc:
            raise DumpRefused(
                "Slave requested incorrect position in master binlog: "
                f"{exc} of '{vf.name}', not where an event begins"
            ) from exc


def describe(exc: ArchiveError) -> DumpRefused:
    """An archive that cannot be reached: the replica may retry."""
    return DumpRefused(f"the archive cannot be read: {exc.message}", fatal=False)
