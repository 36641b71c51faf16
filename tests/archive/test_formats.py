"""The history formats as pure functions: binlog events (a real binlog file of MariaDB
10.11 as fixture), log segments, object names and chains, base image choice."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from selkie.archive import segments
from selkie.archive.binlog import (
    BinlogError,
    Gtid,
    TransactionAssembler,
    binlog_file,
    file_position,
    file_transactions,
    read_binlog_file,
    verify_checksum,
)
from selkie.archive.segments import Record, SegmentError, covering_chain
from selkie.errors import InvalidInput
from selkie.storage.images import ImageRef
from selkie.storage.restore import Target, pick_image

FIXTURE = Path(__file__).with_name("fixtures") / "binlog.000001"


def test_transactions_of_a_real_binlog() -> None:
    # DDL, DDL, a row insert, an update+delete transaction, a rolled back one (not
    # logged), DDL, and a MyISAM insert (which commits with a COMMIT query).
    _, txns = file_transactions(FIXTURE.read_bytes())
    assert [str(t.gtid) for t in txns] == [f"0-1-{i}" for i in range(1, 7)]
    assert all(t.timestamp > 1_700_000_000 for t in txns)
    assert file_position(FIXTURE.read_bytes()) == 6
    _, later = file_transactions(FIXTURE.read_bytes(), after_seq=4)
    assert [t.gtid.seq for t in later] == [5, 6]


def test_a_file_cut_short_keeps_only_whole_transactions() -> None:
    data = FIXTURE.read_bytes()
    _, txns = file_transactions(data)
    end_of_4 = data.index(txns[3].events) + len(txns[3].events)
    # Cut in the middle of transaction 5's events (a crash while writing it).
    cut = data[: end_of_4 + 50]
    with pytest.raises(BinlogError, match="truncated"):
        file_transactions(cut)
    _, whole = file_transactions(data[:end_of_4])
    assert [t.gtid.seq for t in whole] == [1, 2, 3, 4]
    # A crash-consistent copy's position: the whole transactions only (what recovery keeps).
    assert file_position(cut) == 4
    assert file_position(data[: end_of_4 + 19]) == 4  # not even a whole header
    end_of_5 = data.index(txns[4].events) + len(txns[4].events)
    torn = bytearray(data[:end_of_5])
    torn[end_of_5 - 3] ^= 0xFF  # transaction 5 torn at the end: its checksum fails
    assert file_position(bytes(torn)) == 4
    assert file_position(data[:end_of_5]) == 5


def test_corrupt_event_is_detected() -> None:
    _, events = read_binlog_file(FIXTURE.read_bytes())
    verify_checksum(events[5])
    bad = bytearray(events[5])
    bad[25] ^= 0xFF
    with pytest.raises(BinlogError, match="checksum"):
        verify_checksum(bytes(bad))
    assembler = TransactionAssembler()
    with pytest.raises(BinlogError):
        for e in [*events[:5], bytes(bad)]:
            assembler.feed(e, 0)


def test_rebuilt_binlog_reads_back_in_mariadb_binlog() -> None:
    fde, txns = file_transactions(FIXTURE.read_bytes())
    rebuilt = binlog_file(fde, [t.events for t in txns[2:4]])
    _, again = file_transactions(rebuilt)
    assert [t.gtid.seq for t in again] == [3, 4]
    tool = shutil.which("mariadb-binlog")
    if tool is None:
        pytest.skip("mariadb-binlog not installed")
    out = subprocess.run([tool, "--no-defaults", "-"], input=rebuilt, capture_output=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert "GTID 0-1-3" in text and "GTID 0-1-4" in text and "GTID 0-1-1 " not in text


@pytest.mark.parametrize("bad", ["", "1-2", "a-b-c", "0-1-", "0-1-2-3", "-1-1-1"])
def test_gtid_parse(bad: str) -> None:
    assert Gtid.parse("0-1-1234") == Gtid(0, 1, 1234)
    with pytest.raises(ValueError):
        Gtid.parse(bad)


def records(first: int, last: int) -> list[Record]:
    return [Record(i, 1000 * i, 1_800_000_000, 1, b"ev%d" % i) for i in range(first, last + 1)]


def test_segment_roundtrip_and_torn_tail() -> None:
    data = segments.encode(b"FDE", records(5, 9))
    fde, got, end = segments.decode(data)
    assert fde == b"FDE" and [r.seq for r in got] == [5, 6, 7, 8, 9] and end == len(data)
    assert got[2] == records(7, 7)[0]
    torn = data[:-3]
    with pytest.raises(SegmentError, match="cut short"):
        segments.decode(torn)
    _, whole, good = segments.decode(torn, strict=False)
    assert [r.seq for r in whole] == [5, 6, 7, 8] and good < len(torn)
    flipped = bytearray(data)
    flipped[-10] ^= 1
    with pytest.raises(SegmentError, match="checksum"):
        segments.decode(bytes(flipped))
    assert segments.decode(segments.decompress(segments.compress(data)))[1] == got
    with pytest.raises(SegmentError):
        segments.decompress(b"not zstd")


def test_object_names_sort_by_position() -> None:
    names = [segments.object_name(a, b) for a, b in [(10, 20), (1, 9), (100, 200)]]
    assert sorted(names) == [names[1], names[0], names[2]]
    assert segments.parse_object_name(names[0]) == (10, 20)
    assert segments.parse_object_name("junk.seg.zst") is None


def test_covering_chain_prefers_whole_objects_and_stops_at_gaps() -> None:
    # Pieces of a segment and the whole segment that replaced them (a crash between the
    # upload of the whole and the deletion of the pieces leaves both).
    ranges = [(1, 4), (5, 9), (1, 9), (10, 12), (14, 20)]
    assert covering_chain(ranges, 0) == [(1, 9), (10, 12)]
    assert covering_chain(ranges, 6) == [(5, 9), (10, 12)]
    assert covering_chain(ranges, 12) == []
    assert covering_chain([], 0) == []


def img(seq: int, at: int, kind: str = "suspend") -> ImageRef:
    return ImageRef(f"k{seq}", seq, at, kind)


def test_pick_image() -> None:
    images = [img(0, 100, "initial"), img(10, 200), img(30, 300)]
    assert pick_image(images, Target(until_us=250)).seq == 10
    assert pick_image(images, Target(until_us=1000)).seq == 30
    assert pick_image(images, Target()).seq == 30
    assert pick_image(images, Target(until_seq=29)).seq == 10
    # Before the first image but inside the timeline: its initial image.
    assert pick_image(images, Target(until_us=50)).seq == 0
    # Retention pruned the initial image: an earlier target is out of reach.
    with pytest.raises(InvalidInput, match="before the history kept"):
        pick_image(images[1:], Target(until_us=150))
    with pytest.raises(InvalidInput, match="before the history kept"):
        pick_image(images[1:], Target(until_seq=5))
    # A timeline with an ancestor: a target its own images do not serve is the ancestor's.
    assert pick_image(images[1:], Target(until_seq=5), has_ancestor=True) is None
    assert pick_image([], Target(), has_ancestor=True) is None
    assert pick_image(images[1:], Target(until_seq=12), has_ancestor=True).seq == 10
