"""MariaDB binary log events: the few the safekeeper must understand, as pure functions.

Every event starts with the v4 header (names as in MariaDB's replication protocol docs)::

    uint<4> timestamp   uint<1> type   uint<4> server_id   uint<4> event_size
    uint<4> log_pos (where the next event starts)   uint<2> flags

and, with ``binlog_checksum=CRC32`` (the default), ends with a CRC32 of everything before
it. The safekeeper keeps events as they came (checksums included, verified on arrival) and
groups them into transactions: a ``GTID_EVENT`` opens one, and it ends with the event that
commits it (an ``XID_EVENT``, a ``COMMIT``/``ROLLBACK`` query, an XA prepare, or the single
statement of a standalone GTID group such as DDL). Computes run one GTID domain (0) and one
server id, so a transaction's sequence number is a position in the branch's history.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

HEADER_LEN = 19
CHECKSUM_LEN = 4
BINLOG_MAGIC = b"\xfebin"
# The GTID domain Selkie's computes write in; its sequence numbers are history positions.
DOMAIN = 0


class EventType(IntEnum):
    QUERY = 2
    STOP = 3
    ROTATE = 4
    FORMAT_DESCRIPTION = 15
    XID = 16
    HEARTBEAT = 27
    XA_PREPARE = 38
    ANNOTATE_ROWS = 160
    BINLOG_CHECKPOINT = 161
    GTID = 162
    GTID_LIST = 163
    START_ENCRYPTION = 164


# Events that describe the log rather than carry data: never part of a transaction.
_NOT_DATA = {
    EventType.STOP,
    EventType.ROTATE,
    EventType.FORMAT_DESCRIPTION,
    EventType.HEARTBEAT,
    EventType.BINLOG_CHECKPOINT,
    EventType.GTID_LIST,
    EventType.START_ENCRYPTION,
}

_NOT_DATA_VALUES = frozenset(int(t) for t in _NOT_DATA)
GTID_FL_STANDALONE = 0x01
GTID_FL_GROUP_COMMIT_ID = 0x02
LOG_EVENT_ARTIFICIAL_F = 0x20
# Checksum algorithms a FORMAT_DESCRIPTION_EVENT names.
CHECKSUM_OFF = 0
CHECKSUM_CRC32 = 1


class BinlogError(Exception):
    """A malformed, truncated or corrupt event."""


@dataclass(frozen=True, slots=True)
class Header:
    timestamp: int
    type: int
    server_id: int
    event_size: int
    log_pos: int
    flags: int


@dataclass(frozen=True, slots=True, order=True)
class Gtid:
    """A MariaDB GTID ``domain-server-seq``."""

    domain: int
    server_id: int
    seq: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server_id}-{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Gtid:
        parts = text.strip().split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{text!r} is not a GTID such as 0-1-1234")
        domain, server_id, seq = (int(p) for p in parts)
        if domain >= 2**32 or server_id >= 2**32 or seq >= 2**64:
            raise ValueError(f"{text!r} is out of range for a GTID")
        return cls(domain, server_id, seq)


def domain_seq(gtid_list: object) -> int:
    """The domain-0 sequence number in a GTID list as MariaDB prints one (``0-1-1234`` or
    ``0-1-1234,5-1-7``); 0 when there is none."""
    for text in str(gtid_list or "").split(","):
        try:
            gtid = Gtid.parse(text)
        except ValueError:
            continue
        if gtid.domain == DOMAIN:
            return gtid.seq
    return 0


def parse_header(event: bytes) -> Header:
    if len(event) < HEADER_LEN:
        raise BinlogError(f"event of {len(event)} bytes is shorter than its header")
    ts, etype, server_id, size, log_pos, flags = struct.unpack_from("<IBIIIH", event)
    if size != len(event):
        raise BinlogError(f"event says it has {size} bytes but {len(event)} arrived")
    return Header(ts, etype, server_id, size, log_pos, flags)


def verify_checksum(event: bytes) -> None:
    """Raise BinlogError unless the event's trailing CRC32 matches its bytes."""
    if len(event) < HEADER_LEN + CHECKSUM_LEN:
        raise BinlogError("event too short to carry a checksum")
    (stored,) = struct.unpack_from("<I", event, len(event) - CHECKSUM_LEN)
    actual = zlib.crc32(memoryview(event)[:-CHECKSUM_LEN]) & 0xFFFFFFFF
    if stored != actual:
        raise BinlogError(f"event checksum mismatch ({stored:08x} != {actual:08x})")


def with_checksum(event_without_crc: bytes) -> bytes:
    return event_without_crc + struct.pack("<I", zlib.crc32(event_without_crc) & 0xFFFFFFFF)


def _body(event: bytes, checksum: bool) -> bytes:
    return event[HEADER_LEN : len(event) - CHECKSUM_LEN if checksum else len(event)]


def fde_checksum_alg(event: bytes) -> int:
    """The checksum algorithm a FORMAT_DESCRIPTION_EVENT announces (the byte before its own
    CRC32; events of servers too old to have one are unchecked)."""
    # body: binlog_version<2> server_version<50> create_timestamp<4> header_length<1>
    # post-header lengths (one per event type) then checksum_alg<1> and the CRC32<4>.
    if len(event) < HEADER_LEN + 57 + CHECKSUM_LEN + 1:
        return CHECKSUM_OFF
    return event[-CHECKSUM_LEN - 1]


def parse_rotate(event: bytes, *, checksum: bool) -> tuple[int, str]:
    """A ROTATE_EVENT's (position, next binlog file name)."""
    body = _body(event, checksum)
    if len(body) < 8:
        raise BinlogError("truncated ROTATE_EVENT")
    (position,) = struct.unpack_from("<Q", body)
    return position, body[8:].decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class GtidEvent:
    gtid: Gtid
    flags: int

    @property
    def standalone(self) -> bool:
        return bool(self.flags & GTID_FL_STANDALONE)


def parse_gtid(event: bytes, header: Header) -> GtidEvent:
    body = event[HEADER_LEN:]
    if len(body) < 13:
        raise BinlogError("truncated GTID_EVENT")
    seq, domain, flags = struct.unpack_from("<QIB", body)
    return GtidEvent(Gtid(domain, header.server_id, seq), flags)


def parse_gtid_list(event: bytes, *, checksum: bool) -> list[Gtid]:
    body = _body(event, checksum)
    if len(body) < 4:
        raise BinlogError("truncated GTID_LIST_EVENT")
    (count,) = struct.unpack_from("<I", body)
    count &= 0x0FFFFFFF  # the top bits are flags
    if len(body) < 4 + 16 * count:
        raise BinlogError("truncated GTID_LIST_EVENT")
    out = []
    for i in range(count):
        domain, server_id, seq = struct.unpack_from("<IIQ", body, 4 + 16 * i)
        out.append(Gtid(domain, server_id, seq))
    return out


def query_text(event: bytes, *, checksum: bool) -> bytes:
    """The statement of a QUERY_EVENT."""
    body = _body(event, checksum)
    # post-header: thread_id<4> exec_time<4> db_len<1> error_code<2> status_vars_len<2>
    if len(body) < 13:
        raise BinlogError("truncated QUERY_EVENT")
    db_len = body[8]
    (status_len,) = struct.unpack_from("<H", body, 11)
    start = 13 + status_len + db_len + 1
    if start > len(body):
        raise BinlogError("truncated QUERY_EVENT")
    return body[start:]


def _query_commits(event: bytes, *, checksum: bool) -> bool:
    """Whether a QUERY_EVENT inside a non-standalone GTID group commits the transaction."""
    text = query_text(event, checksum=checksum).strip().upper()
    return text in (b"COMMIT", b"ROLLBACK") or text.startswith((b"XA COMMIT", b"XA ROLLBACK"))


@dataclass(frozen=True, slots=True)
class Transaction:
    """One committed transaction: its GTID, when its first event was written on the
    compute (``timestamp``, seconds), when the safekeeper received its last event
    (``received_us``), and its events, concatenated as they were sent."""

    gtid: Gtid
    timestamp: int
    received_us: int
    events: bytes


class TransactionAssembler:
    """Feeds on events in arrival order and hands out each transaction once its last event
    has arrived. Events outside a transaction (rotations, heartbeats, lists) are ignored."""

    def __init__(self, *, checksum: bool = True) -> None:
        self.checksum = checksum
        self._gtid: GtidEvent | None = None
        self._timestamp = 0
        self._parts: list[bytes] = []
        self._statements = 0

    @property
    def open(self) -> bool:
        return self._gtid is not None

    def feed(self, event: bytes, received_us: int) -> Transaction | None:
        # The hot path of the safekeeper (every event of every compute): the type byte
        # alone decides, the header is parsed for GTID events only.
        if len(event) < HEADER_LEN:
            raise BinlogError(f"event of {len(event)} bytes is shorter than its header")
        etype = event[4]
        if self.checksum:
            verify_checksum(event)
        if etype in _NOT_DATA_VALUES:
            return None
        if etype == EventType.GTID:
            if self._gtid is not None:
                raise BinlogError(f"GTID {self._gtid.gtid} was never committed")
            header = parse_header(event)
            self._gtid = parse_gtid(event, header)
            self._timestamp = header.timestamp
            self._parts = [event]
            self._statements = 0
            return None
        if self._gtid is None:
            raise BinlogError(f"event of type {etype} outside a transaction")
        self._parts.append(event)
        if etype != EventType.ANNOTATE_ROWS:
            self._statements += 1
        if self._gtid.standalone:
            done = self._statements == 1
        elif etype in (EventType.XID, EventType.XA_PREPARE):
            done = True
        else:
            done = etype == EventType.QUERY and _query_commits(event, checksum=self.checksum)
        if not done:
            return None
        txn = Transaction(self._gtid.gtid, self._timestamp, received_us, b"".join(self._parts))
        self._gtid = None
        self._parts = []
        return txn

    def reset(self) -> None:
        """Drop a transaction cut off by a lost connection (it is sent again)."""
        self._gtid = None
        self._parts = []
        self._statements = 0


def split_events(data: bytes) -> list[bytes]:
    """A run of concatenated events back into events."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER_LEN:
            raise BinlogError("truncated event")
        (size,) = struct.unpack_from("<I", data, pos + 9)
        if size < HEADER_LEN or pos + size > len(data):
            raise BinlogError("truncated event")
        out.append(data[pos : pos + size])
        pos += size
    return out


def _file_fde(data: bytes | mmap.mmap) -> bytes:
    """A binary log file's FORMAT_DESCRIPTION_EVENT."""
    if data[: len(BINLOG_MAGIC)] != BINLOG_MAGIC or len(data) < len(BINLOG_MAGIC) + HEADER_LEN:
        raise BinlogError("not a binary log file")
    (fde_len,) = struct.unpack_from("<I", data, len(BINLOG_MAGIC) + 9)
    fde = data[len(BINLOG_MAGIC) : len(BINLOG_MAGIC) + fde_len]
    if len(fde) != fde_len or parse_header(fde).type != EventType.FORMAT_DESCRIPTION:
        raise BinlogError("binary log file does not start with a FORMAT_DESCRIPTION_EVENT")
    return fde


def read_binlog_file(data: bytes, *, offset: int = 0) -> tuple[bytes, list[bytes]]:
    """A binary log file's FORMAT_DESCRIPTION_EVENT and its other events (those from byte
    ``offset`` on, when given: where an earlier reader stopped)."""
    fde = _file_fde(data)
    return fde, split_events(data[max(offset, len(BINLOG_MAGIC) + len(fde)) :])


def rewrite_log_pos(event: bytes, log_pos: int, *, checksum: bool) -> bytes:
    """The event with another ``log_pos`` (its checksum recomputed)."""
    head = event[:13] + struct.pack("<I", log_pos) + event[17:]
    return with_checksum(head[:-CHECKSUM_LEN]) if checksum else head


def rotate_event(
    name: str, position: int, *, server_id: int, checksum: bool, artificial: bool = True
) -> bytes:
    """A ROTATE_EVENT naming the binary log that follows (``artificial``: a position
    announcement, as a primary sends at the start of a dump, not a file switch; its
    ``log_pos`` is 0)."""
    body = struct.pack("<Q", position) + name.encode()
    size = HEADER_LEN + len(body) + (CHECKSUM_LEN if checksum else 0)
    flags = LOG_EVENT_ARTIFICIAL_F if artificial else 0
    head = struct.pack("<IBIIIH", 0, EventType.ROTATE, server_id, size, 0, flags)
    return with_checksum(head + body) if checksum else head + body


def binlog_file(fde: bytes, transactions: list[bytes], *, rotate: bytes = b"") -> bytes:
    """A binary log file (magic, FORMAT_DESCRIPTION_EVENT, the events) that
    ``mariadb-binlog`` reads: positions are rewritten to where each event now lies. A
    ``rotate`` event goes after the format description unchanged (a relay log's naming
    of the primary's file)."""
    checksum = fde_checksum_alg(fde) == CHECKSUM_CRC32
    pos = len(BINLOG_MAGIC) + len(fde)
    out = [BINLOG_MAGIC, rewrite_log_pos(fde, pos, checksum=checksum), rotate]
    pos += len(rotate)
    for event in (e for t in transactions for e in split_events(t)):
        pos += len(event)
        out.append(rewrite_log_pos(event, pos, checksum=checksum))
    return b"".join(out)


def file_transactions(
    data: bytes, *, after_seq: int = -1, offset: int = 0
) -> tuple[bytes, list[Transaction]]:
    """A binary log file's FORMAT_DESCRIPTION_EVENT and the complete transactions in it
    (from byte ``offset``, which must be where a transaction begins) with a sequence number
    above ``after_seq``."""
    fde, events = read_binlog_file(data, offset=offset)
    assembler = TransactionAssembler(checksum=fde_checksum_alg(fde) == CHECKSUM_CRC32)
    out = []
    for event in events:
        txn = assembler.feed(event, 0)
        if txn is not None and txn.gtid.seq > after_seq:
            out.append(txn)
    return fde, out


def file_position(data: bytes | mmap.mmap) -> int:
    """The sequence number of the last transaction a binary log file holds or inherits from
    the files before it (its GTID_LIST_EVENT), in domain 0; 0 when there is none. A file a
    crash (or a crash-consistent copy) cut short counts only its whole transactions: those
    are what InnoDB's recovery commits; one cut off (its end not written, or torn) is rolled
    back.

    Only the file's tail is read where it can be: the last GTID event is found from the end
    (a candidate is an event whose header's end position is where it ends, with a good
    checksum), and the transaction it opens is whole or not. A 64 MiB file of small
    transactions is 10^6 events; reading them all took seconds."""
    fde = _file_fde(data)
    checksum = fde_checksum_alg(fde) == CHECKSUM_CRC32
    start = len(BINLOG_MAGIC) + len(fde)
    if checksum:
        last = _last_gtid_event(data, start)
        if last is not None:
            pos, gtid = last
            if gtid.gtid.domain == DOMAIN:
                # Its transaction (and any after it, of another server) whole, or the one
                # before it was the last.
                whole = _scan(data, pos, checksum, 0)
                return whole if whole >= gtid.gtid.seq else gtid.gtid.seq - 1
    return _scan(data, start, checksum, 0)


def _last_gtid_event(data: bytes | mmap.mmap, start: int) -> tuple[int, GtidEvent] | None:
    """The last whole GTID event of a file with checksums, and where it begins: of the
    computes' server id first (a type byte and a server id are rarely found together in
    row data), else of any."""
    return _last_event_like(data, start, _GTID_OURS) or _last_event_like(data, start, _GTID_TYPE)


def _last_event_like(
    data: bytes | mmap.mmap, start: int, pattern: bytes
) -> tuple[int, GtidEvent] | None:
    end = len(data)
    while True:
        found = data.rfind(pattern, start + 4, end)
        if found < 0:
            return None
        end = found
        pos = found - 4
        if len(data) - pos < HEADER_LEN:
            continue
        size, log_pos = struct.unpack_from("<II", data, pos + 9)
        if not (HEADER_LEN < size <= _GTID_EVENT_MAX and log_pos == pos + size):
            continue
        if pos + size > len(data):
            continue
        event = data[pos : pos + size]
        try:
            verify_checksum(event)
            return pos, parse_gtid(event, parse_header(event))
        except (BinlogError, struct.error):
            continue


_GTID_TYPE = bytes([EventType.GTID])
_GTID_OURS = _GTID_TYPE + struct.pack("<I", 1)  # the computes' server id
# A GTID event: header, sequence number, domain, flags, and at most an XA id or a commit id.
_GTID_EVENT_MAX = HEADER_LEN + 8 + 4 + 1 + 8 + 4 + 64 + 128 + CHECKSUM_LEN


def _scan(data: bytes | mmap.mmap, pos: int, checksum: bool, last: int) -> int:
    """Events from ``pos`` on: the last whole transaction's sequence number (or a GTID
    list's), in domain 0."""
    assembler = TransactionAssembler(checksum=checksum)
    while len(data) - pos >= HEADER_LEN:
        (size,) = struct.unpack_from("<I", data, pos + 9)
        if size < HEADER_LEN or pos + size > len(data):
            break  # cut off by the crash
        event = data[pos : pos + size]
        pos += size
        if event[4] == EventType.GTID_LIST:
            for gtid in parse_gtid_list(event, checksum=checksum):
                if gtid.domain == DOMAIN:
                    last = max(last, gtid.seq)
            continue
        try:
            txn = assembler.feed(event, 0)
        except BinlogError:
            break  # a torn event (its checksum fails): nothing after it was written whole
        if txn is not None and txn.gtid.domain == DOMAIN:
            last = max(last, txn.gtid.seq)
    return last
