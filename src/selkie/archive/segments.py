"""Log segments: the safekeeper's files, and the archive's log objects.

A segment holds consecutive committed transactions of one timeline::

    "SLKSEG01"  uint<4> fde_length  FORMAT_DESCRIPTION_EVENT
    record*     uint<4> events_length  uint<8> seq  uint<8> received_us
                uint<4> timestamp  uint<4> server_id  events  uint<4> crc32(record)

``seq`` is the transaction's GTID sequence number (domain 0), ``received_us`` when the
safekeeper had all of it (the clock point-in-time restore cuts at), ``timestamp`` the
compute's own binlog timestamp. The format description event of the compute's binlog goes
first, so a segment alone is enough to rebuild a binary log ``mariadb-binlog`` replays.
Every record carries its own CRC32: a file cut short by a crash is read up to its last
whole record, and a corrupt byte anywhere is an error that names the segment.

Archive objects are segments compressed with zstd, named by the range of sequence numbers
they hold (``<first>-<last>.seg.zst``, zero-padded so names sort by position).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import zstandard

from selkie.archive.binlog import Transaction

MAGIC = b"SLKSEG01"
_RECORD = struct.Struct("<IQQII")
_CRC = struct.Struct("<I")
SEQ_WIDTH = 20
OBJECT_SUFFIX = ".seg.zst"
_OBJECT_NAME = re.compile(rf"^(\d{{{SEQ_WIDTH}}})-(\d{{{SEQ_WIDTH}}}){re.escape(OBJECT_SUFFIX)}$")


class SegmentError(Exception):
    """A segment that is not one, or whose bytes do not match their checksums."""


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    received_us: int
    timestamp: int
    server_id: int
    events: bytes

    @classmethod
    def of(cls, txn: Transaction) -> Record:
        return cls(txn.gtid.seq, txn.received_us, txn.timestamp, txn.gtid.server_id, txn.events)

    def encode(self) -> bytes:
        head = _RECORD.pack(
            len(self.events), self.seq, self.received_us, self.timestamp, self.server_id
        )
        body = head + self.events
        return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def header(fde: bytes) -> bytes:
    return MAGIC + struct.pack("<I", len(fde)) + fde


def encode(fde: bytes, records: list[Record]) -> bytes:
    return header(fde) + b"".join(r.encode() for r in records)


def decode_header(data: bytes) -> tuple[bytes, int]:
    """A segment's format description event, and where its records begin."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise SegmentError("not a log segment")
    (fde_len,) = struct.unpack_from("<I", data, len(MAGIC))
    pos = len(MAGIC) + 4 + fde_len
    if pos > len(data):
        raise SegmentError("log segment header is cut short")
    return data[len(MAGIC) + 4 : pos], pos


def decode(data: bytes, *, strict: bool = True) -> tuple[bytes, list[Record], int]:
    """(format description event, records, bytes of whole records). With ``strict`` a
    partial or corrupt record is an error; without, reading stops before it (a file whose
    writer crashed mid-append)."""
    fde, pos = decode_header(data)
    records, end = decode_records(data, pos, strict=strict)
    return fde, records, end


def decode_records(data: bytes, pos: int, *, strict: bool = True) -> tuple[list[Record], int]:
    """The records of ``data`` from byte ``pos`` on, and where the last whole one ends."""
    records = []
    while pos < len(data):
        problem = None
        if len(data) - pos < _RECORD.size + _CRC.size:
            problem = "a record is cut short"
        else:
            length, seq, received, ts, server_id = _RECORD.unpack_from(data, pos)
            end = pos + _RECORD.size + length
            if end + _CRC.size > len(data):
                problem = "a record is cut short"
            else:
                (crc,) = _CRC.unpack_from(data, end)
                if crc != zlib.crc32(data[pos:end]) & 0xFFFFFFFF:
                    problem = f"the record at byte {pos} fails its checksum"
        if problem is not None:
            if strict:
                raise SegmentError(problem)
            break
        records.append(Record(seq, received, ts, server_id, data[pos + _RECORD.size : end]))
        pos = end + _CRC.size
    return records, pos


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def decompress(data: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31)
    except zstandard.ZstdError as exc:
        raise SegmentError(f"not zstd data: {exc}") from exc


def object_name(first: int, last: int) -> str:
    return f"{first:0{SEQ_WIDTH}d}-{last:0{SEQ_WIDTH}d}{OBJECT_SUFFIX}"


def parse_object_name(name: str) -> tuple[int, int] | None:
    m = _OBJECT_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def covering_chain(ranges: list[tuple[int, int]], after: int) -> list[tuple[int, int]]:
    """From objects' (first, last) ranges, which may overlap, a chain that holds every
    sequence number from ``after + 1`` on as far as the objects reach without a gap,
    preferring objects that reach furthest (fewest to fetch)."""
    chain: list[tuple[int, int]] = []
    pos = after
    while True:
        candidates = [r for r in ranges if r[0] <= pos + 1 <= r[1]]
        if not candidates:
            return chain
        best = max(candidates, key=lambda r: r[1])
        chain.append(best)
        pos = best[1]
