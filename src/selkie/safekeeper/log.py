"""The safekeeper's own durable copy of one timeline's log, before and while it is archived.

Under ``<safekeeper_dir>/<timeline_id>/``::

    meta.json                  project and timeline (to find the archive prefix after a restart)
    <first>.open               the segment being appended to
    <first>-<last>.seg         closed segments, kept until the archive holds them
    shipped                    the last sequence number the archive holds

Appends are buffered in memory and made durable by :meth:`TimelineLog.flush` (write, then
fsync, in a thread): one fsync covers every transaction that arrived meanwhile, as a
database's group commit does. Only after a flush has returned is a transaction durable
here, and only then may a semi-synchronous compute be told so. At open, an ``.open`` file
cut short by a crash is truncated to its last whole record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from selkie.archive import segments
from selkie.archive.layout import TimelineRef
from selkie.archive.local import fsync_dir
from selkie.archive.segments import Record, SegmentError

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 << 20
# A segment that has been open this long is closed at the next flush, so a quiet endpoint's
# log is archived as a few whole segments rather than many small pieces.
SEGMENT_SECONDS = 600.0


class LogGap(Exception):
    """A transaction arrived that does not follow the last one: something is missing."""


@dataclass(slots=True)
class LocalSegment:
    path: Path
    first: int
    last: int
    size: int
    closed: bool
    opened_at: float = 0.0
    # Where the records the archive does not hold yet begin (0: not known, from the start).
    shipped_offset: int = 0


class TimelineLog:
    def __init__(self, root: Path, ref: TimelineRef) -> None:
        self.ref = ref
        self.dir = root / ref.timeline_id
        self.segments: list[LocalSegment] = []
        self.fde: bytes | None = None
        self.last_seq = 0  # durable here
        self.shipped_seq = 0  # durable in the archive
        # The last appended (durable, being flushed, or queued): what comes next follows it.
        self.appended_seq = 0
        # Bytes of log appended since this process opened it (a base image is due after
        # base_image_log_bytes of them).
        self.appended_bytes = 0
        # Where in the compute's binary log the last appended transaction ended (file, byte
        # position), when it came by the stream: a drain after a stop reads on from there.
        self.binlog_end: tuple[str, int] | None = None
        self._pending: list[Record] = []
        # (seq, received_us, bytes) of durable records the archive does not hold yet.
        self.unshipped: deque[tuple[int, int, int]] = deque()
        self._lock = asyncio.Lock()
        # Notified when transactions become durable (binlog dumps follow the log live).
        self._durable = asyncio.Condition()

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, ref: TimelineRef) -> TimelineLog:
        """Open (or create) the log on disk, recovering from a crash (blocking)."""
        tl = cls(root, ref)
        tl.dir.mkdir(parents=True, exist_ok=True)
        meta = tl.dir / "meta.json"
        if not meta.exists():
            meta.write_text(json.dumps({"project_id": ref.project_id, "timeline": ref.timeline_id}))
        try:
            tl.shipped_seq = int((tl.dir / "shipped").read_text())
        except (OSError, ValueError):
            tl.shipped_seq = 0
        for path in sorted(tl.dir.iterdir()):
            if path.suffix not in (".seg", ".open"):
                continue
            data = path.read_bytes()
            try:
                fde, records, good = segments.decode(data, strict=path.suffix == ".seg")
            except SegmentError as exc:
                if path.suffix == ".seg":
                    raise SegmentError(f"safekeeper segment {path}: {exc}") from exc
                log.warning("dropping unreadable open segment %s: %s", path, exc)
                path.unlink()
                continue
            if good < len(data):
                log.warning("truncating %s to its last whole record", path)
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            tl.fde = tl.fde or fde
            if not records:
                if path.suffix == ".open":
                    path.unlink()
                continue
            seg = LocalSegment(path, records[0].seq, records[-1].seq, good, path.suffix == ".seg")
            seg.opened_at = time.monotonic()
            tl.segments.append(seg)
            tl.last_seq = max(tl.last_seq, seg.last)
            for r in records:
                if r.seq > tl.shipped_seq:
                    tl.unshipped.append((r.seq, r.received_us, len(r.events)))
        tl.segments.sort(key=lambda s: s.first)
        # Everything shipped and its local segments gone: the log goes on from there.
        tl.last_seq = max(tl.last_seq, tl.shipped_seq)
        tl.appended_seq = tl.last_seq
        return tl

    @staticmethod
    def read_meta(path: Path) -> TimelineRef | None:
        try:
            data = json.loads((path / "meta.json").read_text())
            return TimelineRef(str(data["project_id"]), str(data["timeline"]))
        except (OSError, ValueError, KeyError):
            return None

    # --- appending -------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self.appended_seq + 1

    def start_at(self, seq: int, *, archived: bool = False) -> None:
        """An empty log begins after ``seq`` (``archived``: the archive holds up to it)."""
        if self.segments or self._pending:
            raise LogGap(f"timeline {self.ref.timeline_id} already holds transactions")
        self.last_seq = self.appended_seq = seq
        if archived:
            self.shipped_seq = seq

    def append(self, record: Record) -> None:
        """Queue a transaction; durable after the next :meth:`flush`."""
        if record.seq != self.next_seq:
            raise LogGap(
                f"timeline {self.ref.timeline_id}: transaction {record.seq} arrived, "
                f"{self.next_seq} was expected"
            )
        self._pending.append(record)
        self.appended_seq = record.seq
        self.appended_bytes += len(record.events)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    async def flush(self, *, close: bool = False) -> int:
        """Make every queued transaction durable; returns the last durable sequence number.
        ``close`` also closes the open segment (the compute stopped). A caller cancelled
        meanwhile does not cut it short: the write and what is recorded of it go together."""
        return await asyncio.shield(self._flush(close))

    async def _flush(self, close: bool) -> int:
        async with self._lock:
            records, self._pending = self._pending, []
            if records or close:
                await asyncio.to_thread(self._write, records, close)
            for r in records:
                self.unshipped.append((r.seq, r.received_us, len(r.events)))
            if records:
                self.last_seq = records[-1].seq
                async with self._durable:
                    self._durable.notify_all()
            return self.last_seq

    async def wait_durable(self, after: int, timeout: float | None) -> bool:
        """Until a transaction after ``after`` is durable here; False after ``timeout``
        seconds (None: no limit) without one."""
        async with self._durable:
            try:
                await asyncio.wait_for(
                    self._durable.wait_for(lambda: self.last_seq > after), timeout
                )
            except TimeoutError:
                return False
        return True

    def _write(self, records: list[Record], close: bool) -> None:
        seg = self.segments[-1] if self.segments and not self.segments[-1].closed else None
        if records:
            if self.fde is None:
                raise SegmentError("no format description event yet: cannot start a segment")
            data = b"".join(r.encode() for r in records)
            created = seg is None
            if seg is None:
                first = records[0].seq
                path = self.dir / f"{first:0{segments.SEQ_WIDTH}d}.open"
                data = segments.header(self.fde) + data
                seg = LocalSegment(path, first, first, 0, False, time.monotonic())
                self.segments.append(seg)
            with open(seg.path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if created:
                fsync_dir(self.dir)
            seg.size += len(data)
            seg.last = records[-1].seq
        if seg is not None and (
            close
            or seg.size >= SEGMENT_BYTES
            or time.monotonic() - seg.opened_at >= SEGMENT_SECONDS
        ):
            closed = self.dir / segments.object_name(seg.first, seg.last).replace(
                segments.OBJECT_SUFFIX, ".seg"
            )
            seg.path.rename(closed)
            fsync_dir(self.dir)
            seg.path, seg.closed = closed, True

    # --- reading and shipping --------------------------------------------------------------

    async def read_after(
        self, after: int, *, whole: bool = False
    ) -> list[tuple[LocalSegment, bytes, list[Record], int]]:
        """Per segment holding any, its durable records with a sequence number above
        ``after``, and the byte offset where what was read ends (under the lock: a flush
        may not rename a segment being read). Only the part of a segment past what was
        shipped is read, unless ``whole``."""
        async with self._lock:
            return await asyncio.to_thread(self._read_after, after, whole)

    def _read_after(
        self, after: int, whole: bool
    ) -> list[tuple[LocalSegment, bytes, list[Record], int]]:
        out = []
        for seg in self.segments:
            if seg.last <= after:
                continue
            with open(seg.path, "rb") as fh:
                head = fh.read(4096)
                fde, start = segments.decode_header(head)
                if len(fde) + 12 > len(head):
                    fh.seek(0)
                    fde, start = segments.decode_header(fh.read(start))
                start = start if whole else max(start, seg.shipped_offset)
                end = seg.size
                fh.seek(start)
                data = fh.read(end - start)
            records, _ = segments.decode_records(data, 0)
            out.append((seg, fde, [r for r in records if r.seq > after], end))
        return out

    def mark_shipped(self, seq: int, seg: LocalSegment | None = None, offset: int = 0) -> None:
        """The archive holds everything up to ``seq`` (blocking: writes the marker); in
        ``seg``, everything before byte ``offset``."""
        if seg is not None:
            seg.shipped_offset = max(seg.shipped_offset, offset)
        tmp = self.dir / "shipped.tmp"
        tmp.write_text(str(seq))
        tmp.replace(self.dir / "shipped")
        self.shipped_seq = max(self.shipped_seq, seq)
        while self.unshipped and self.unshipped[0][0] <= self.shipped_seq:
            self.unshipped.popleft()

    def forget(self, seg: LocalSegment) -> None:
        """Remove a closed segment the archive holds whole (blocking)."""
        seg.path.unlink(missing_ok=True)
        self.segments.remove(seg)

    def lag(self, now_us: int) -> tuple[float, int]:
        """(seconds, bytes) of durable log the archive does not hold yet."""
        if not self.unshipped:
            return 0.0, 0
        oldest = self.unshipped[0][1]
        return max(0.0, (now_us - oldest) / 1e6), sum(x[2] for x in self.unshipped)
