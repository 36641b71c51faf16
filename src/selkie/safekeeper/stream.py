"""The binlog stream a MariaDB primary sends a replica, laid out over a timeline's history
(pure functions and one small positions keeper, no I/O).

A timeline has no binlog files: its transactions are records in segments. The stream
presents them as *virtual* binlog files, ``selkie-bin.<N>`` being the file whose first
transaction is sequence number ``N`` of the timeline (``selkie-bin.000001`` holds a whole
history that began at the template). Each virtual file is laid out as a real one::

    magic(4)  FORMAT_DESCRIPTION_EVENT  GTID_LIST_EVENT [0-1-(N-1)]  transactions …

so a replica's file name and byte position name an exact place, and a dump is sent as
MariaDB's dump thread sends one (``sql_repl.cc``): an artificial ROTATE_EVENT naming the
file, the format description event (``created`` cleared, so a reconnecting replica keeps
its temporary tables; ``log_pos`` 0 when the dump starts inside the file), the GTID list,
then each event with ``log_pos`` rewritten to where it ends in the virtual file (its CRC32
recomputed). A file ends after about ``max_file_bytes`` (event positions are 32 bits) with
a ROTATE_EVENT to the next one, which is opened the same way.
"""

from __future__ import annotations

import re
import struct

from selkie.archive.binlog import (
    CHECKSUM_CRC32,
    HEADER_LEN,
    LOG_EVENT_ARTIFICIAL_F,
    EventType,
    fde_checksum_alg,
    rewrite_log_pos,
    with_checksum,
)
from selkie.compute.mariadb import COMPUTE_SERVER_ID

BASENAME = "selkie-bin"
BINLOG_HEADER_SIZE = 4
MAX_FILE_BYTES = 1 << 30
LOG_EVENT_BINLOG_IN_USE_F = 0x0001
# GTID_LIST_EVENT count field: a flag in its top bits marks START SLAVE UNTIL reached.
GTID_LIST_UNTIL_REACHED = 1 << 28
# FORMAT_DESCRIPTION_EVENT body: binlog_version<2> server_version<50> created<4> …
_FDE_CREATED = HEADER_LEN + 2 + 50
_NAME = re.compile(rf"^{re.escape(BASENAME)}\.(\d{{6,}})$")


def file_name(first: int) -> str:
    """The virtual file whose first transaction is ``first``."""
    return f"{BASENAME}.{first:06d}"


def parse_file_name(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def build_event(
    etype: int,
    body: bytes,
    *,
    server_id: int,
    log_pos: int,
    flags: int = 0,
    timestamp: int = 0,
    checksum: bool,
) -> bytes:
    """An event from its type and body (a CRC32 appended with ``checksum``)."""
    size = HEADER_LEN + len(body) + (4 if checksum else 0)
    event = struct.pack("<IBIIIH", timestamp, etype, server_id, size, log_pos, flags) + body
    return with_checksum(event) if checksum else event


def fde_key(fde: bytes) -> bytes:
    """What makes two format description events describe the same format (not when or
    where they were written)."""
    return fde[HEADER_LEN:_FDE_CREATED] + fde[_FDE_CREATED + 4 : -4]


class BadPosition(Exception):
    """A position in a virtual file where no event begins."""


class VirtualFile:
    """One virtual binlog file being sent: its name, where the next event goes, and the
    events that open and close it. ``start`` is the byte position the replica asked to
    begin at: events before it are laid out (they count) but not sent."""

    def __init__(
        self,
        *,
        first: int,
        fde: bytes,
        server_id: int,
        start: int = BINLOG_HEADER_SIZE,
        rotate_checksum: bool = True,
    ) -> None:
        if start < BINLOG_HEADER_SIZE:
            raise BadPosition(f"position {start} is inside the binlog file header")
        self.first = first
        self.name = file_name(first)
        self.fde = fde
        self.server_id = server_id
        self.checksum = fde_checksum_alg(fde) == CHECKSUM_CRC32
        self.rotate_checksum = rotate_checksum
        self.start = start
        self.pos = BINLOG_HEADER_SIZE

    @property
    def reached(self) -> bool:
        """Whether the position the replica asked for has been laid out."""
        return self.pos >= self.start

    def opening(self, *, timestamp: int) -> list[bytes]:
        """The artificial ROTATE_EVENT, the FORMAT_DESCRIPTION_EVENT (always sent) and the
        GTID list of what came before the file (sent when at or after ``start``)."""
        rotate = build_event(
            EventType.ROTATE,
            struct.pack("<Q", self.start) + self.name.encode(),
            server_id=self.server_id,
            log_pos=0,
            flags=LOG_EVENT_ARTIFICIAL_F,
            checksum=self.rotate_checksum,
        )
        fde = bytearray(self.fde)
        (flags,) = struct.unpack_from("<H", fde, 17)
        fde[17:19] = struct.pack("<H", flags & ~LOG_EVENT_BINLOG_IN_USE_F)
        fde[_FDE_CREATED : _FDE_CREATED + 4] = bytes(4)
        end = self.pos + len(fde)
        if self.pos < self.start < end:
            raise BadPosition(f"position {self.start} is inside the format description event")
        # Started inside the file: a log_pos of 0 leaves the replica's position as it is.
        log_pos = end if self.start == BINLOG_HEADER_SIZE else 0
        out = [rotate, rewrite_log_pos(bytes(fde), log_pos, checksum=self.checksum)]
        self.pos = end
        prior = [(0, COMPUTE_SERVER_ID, self.first - 1)] if self.first > 1 else []
        gtid_list = self.place(self._gtid_list(prior, flags=0, timestamp=timestamp))
        if gtid_list is not None:
            out.append(gtid_list)
        return out

    def place(self, event: bytes) -> bytes | None:
        """The event with its position in this file (``log_pos``: where it ends), or None
        when it lies before ``start``."""
        begin = self.pos
        self.pos += len(event)
        if begin >= self.start:
            return rewrite_log_pos(event, self.pos, checksum=self.checksum)
        if self.pos > self.start:
            raise BadPosition(f"position {self.start} is inside an event (at {begin})")
        return None

    def _gtid_list(self, gtids: list[tuple[int, int, int]], *, flags: int, timestamp: int) -> bytes:
        """A GTID_LIST_EVENT (its ``log_pos`` set when placed); with no ``timestamp`` an
        artificial one, as MariaDB's dump thread makes up."""
        body = struct.pack("<I", len(gtids) | flags) + b"".join(
            struct.pack("<IIQ", *g) for g in gtids
        )
        return build_event(
            EventType.GTID_LIST,
            body,
            server_id=self.server_id,
            log_pos=0,
            flags=0 if timestamp else LOG_EVENT_ARTIFICIAL_F,
            timestamp=timestamp,
            checksum=self.checksum,
        )

    def heartbeat(self) -> bytes:
        """A HEARTBEAT_LOG_EVENT: this file and where it stands (not placed)."""
        return build_event(
            EventType.HEARTBEAT,
            self.name.encode(),
            server_id=self.server_id,
            log_pos=self.pos,
            checksum=self.checksum,
        )

    def until_reached(self, last: int) -> bytes:
        """The artificial GTID list that tells a replica its START SLAVE UNTIL position is
        reached (not placed in the file, as MariaDB's is not)."""
        event = self._gtid_list(
            [(0, COMPUTE_SERVER_ID, last)], flags=GTID_LIST_UNTIL_REACHED, timestamp=0
        )
        return rewrite_log_pos(event, self.pos, checksum=self.checksum)

    def rotate(self, next_first: int, *, timestamp: int) -> bytes:
        """The ROTATE_EVENT that ends this file: the next one begins at ``next_first``."""
        body = struct.pack("<Q", BINLOG_HEADER_SIZE) + file_name(next_first).encode()
        event = build_event(
            EventType.ROTATE,
            body,
            server_id=self.server_id,
            log_pos=0,
            timestamp=timestamp,
            checksum=self.checksum,
        )
        placed = self.place(event)
        assert placed is not None
        return placed
