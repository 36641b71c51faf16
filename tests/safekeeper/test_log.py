"""The safekeeper's local log and its shipping to the archive, without a compute: appends,
group flushes, crash recovery, lag, shipping that a crash interrupts at any point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from selkie.archive import LocalArchive, segments
from selkie.archive.layout import TimelineRef
from selkie.archive.segments import Record
from selkie.safekeeper import log as sklog
from selkie.safekeeper.log import LogGap, TimelineLog
from selkie.safekeeper.service import Safekeeper
from selkie.storage.restore import wal_chain

REF = TimelineRef("p1", "tl-1")


def rec(seq: int, size: int = 10) -> Record:
    return Record(seq, 1_000_000 * seq, 1_800_000_000, 1, bytes([seq % 256]) * size)


async def test_append_flush_recover(tmp_path: Path) -> None:
    tl = TimelineLog.open(tmp_path, REF)
    tl.fde = b"FDE"
    tl.start_at(4)
    with pytest.raises(LogGap, match="transaction 6 arrived, 5 was expected"):
        tl.append(rec(6))
    for i in range(5, 9):
        tl.append(rec(i))
    assert tl.next_seq == 9 and tl.last_seq == 4
    assert await tl.flush() == 8
    # A crash mid-append leaves a partial record: reopening drops it, keeps the rest.
    (seg,) = tl.segments
    seg.path.write_bytes(seg.path.read_bytes() + rec(9).encode()[:-5])
    again = TimelineLog.open(tmp_path, REF)
    assert again.last_seq == 8 and again.next_seq == 9 and again.fde == b"FDE"
    assert [s.first for s in again.segments] == [5]
    again.append(rec(9))
    assert await again.flush(close=True) == 9
    assert again.segments[0].closed and again.segments[0].path.name.endswith(
        "-00000000000000000009.seg"
    )
    assert [u[0] for u in again.unshipped] == [5, 6, 7, 8, 9]
    lag_s, lag_b = again.lag(10_000_000)
    assert lag_s == pytest.approx(5.0) and lag_b == 50


async def test_segments_roll_over_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sklog, "SEGMENT_BYTES", 200)
    tl = TimelineLog.open(tmp_path, REF)
    tl.fde = b"F"
    for i in range(1, 11):
        tl.append(rec(i, 50))
        await tl.flush()
    closed = [s for s in tl.segments if s.closed]
    assert len(closed) >= 3
    assert sorted((s.first, s.last) for s in tl.segments)[0][0] == 1


async def test_shipping_survives_crashes_at_every_step(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    root = tmp_path / "sk"
    sk = Safekeeper(root=root, archive=archive)
    tl = await sk.timeline(REF)
    tl.fde = b"FDE"
    for i in range(1, 6):
        tl.append(rec(i))
    await tl.flush()
    assert await sk.ship_once() == 1
    for i in range(6, 9):
        tl.append(rec(i))
    await tl.flush(close=True)
    # A crash after the upload but before the marker: the next run ships the same range
    # again under the same name (no duplicate), then compacts the closed segment.
    (root / REF.timeline_id / "shipped").write_text("5")
    sk2 = Safekeeper(root=root, archive=archive)
    await sk2.start()
    try:
        await sk2.ship_once()
    finally:
        await sk2.stop()
    keys = [o.key.rsplit("/", 1)[1] for o in await archive.list(REF.wal_prefix)]
    assert keys == [segments.object_name(1, 8)]
    assert not any(p.suffix in (".seg", ".open") for p in (root / REF.timeline_id).iterdir())
    assert [k.rsplit("/", 1)[1] for k in await wal_chain(archive, REF, 0)] == keys


async def test_a_missing_object_in_the_middle_is_named(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    for first, last in [(1, 5), (6, 9), (10, 12)]:
        data = segments.compress(segments.encode(b"F", [rec(i) for i in range(first, last + 1)]))
        await archive.put(REF.wal_prefix + segments.object_name(first, last), data)
    os.remove(tmp_path / "archive" / (REF.wal_prefix + segments.object_name(6, 9)))
    from selkie.errors import ObjectMissing

    with pytest.raises(ObjectMissing, match=r"misses transactions 6\.\.9"):
        await wal_chain(archive, REF, 0)


async def test_an_archive_that_is_down_only_grows_the_lag(tmp_path: Path) -> None:
    from selkie.errors import ArchiveError

    class Down(LocalArchive):
        async def put(self, key: str, data: bytes) -> None:
            raise ArchiveError("archive: cannot write: connection refused")

    sk = Safekeeper(root=tmp_path / "sk", archive=Down(tmp_path / "a"))
    tl = await sk.timeline(REF)
    tl.fde = b"F"
    tl.append(rec(1))
    await tl.flush(close=True)
    with pytest.raises(ArchiveError):
        await sk.ship_once()
    # Nothing local was deleted; the archive gets it when it is back.
    assert tl.segments and tl.shipped_seq == 0
    sk.archive = LocalArchive(tmp_path / "a")
    await sk.ship_once()
    assert tl.shipped_seq == 1 and not tl.segments


async def test_a_cancelled_flush_still_records_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flusher cancelled while its write runs in a thread (the compute stopping) must not
    leave the write unrecorded: the transaction would be on disk but never shipped."""
    import asyncio
    import time

    tl = TimelineLog.open(tmp_path, REF)
    tl.fde = b"F"
    write = tl._write

    def slow_write(records: list[Record], close: bool) -> None:
        time.sleep(0.2)
        write(records, close)

    monkeypatch.setattr(tl, "_write", slow_write)
    tl.append(rec(1))
    flusher = asyncio.ensure_future(tl.flush())
    await asyncio.sleep(0.05)
    flusher.cancel()
    assert await tl.flush() == 1
    assert tl.last_seq == 1 and [u[0] for u in tl.unshipped] == [1]
