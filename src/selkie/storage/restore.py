"""Point-in-time restore: the newest base image at or before the target, then the log
replayed up to the target by a private replica's applier (:mod:`selkie.storage.replay`).

::

    list base images ──▶ pick image ≤ target ──▶ materialize into staging
    list log objects ──▶ chain from image.seq (no gaps) ──▶ per object: the transactions
                         ≤ target as a relay log ──▶ the private server's SQL thread

The private server runs on the staging datadir, unprivileged and unreachable, and keeps the
replayed transactions in its binary log under their own GTIDs, so the datadir comes out
with its GTID state at the target (checked). It is shut down cleanly before the caller
swaps the staging directory in; if anything fails, the staging directory is the only thing
touched (and the caller removes it).

A target is a time (every transaction the safekeeper had received by then) or a position
(every transaction up to a GTID sequence number), or neither: everything the history holds.
The cut is made here, transaction by transaction, before anything is applied: the applier
is given exactly the transactions up to the target.

A timeline made by branching has *ancestors*: its data began as its parent's at the branch
point (a GTID sequence number), and it has no base image until its first suspend or hot
image. A target the timeline's own images do not serve is reached through the ancestry::

    main   ──●────────────●─────┬──────────▶      ● base image
                                │ branch point 210
    dev                         └──●───────▶       (the child's own log from 211)

    restore of dev at 230, before dev's first image:
      main's newest image ≤ 210, main's log up to 210, then dev's log 211..230

The sequence numbers run on across a branch point (the child's compute goes on from the
parent's binary log), so the applier sees one unbroken run of transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from selkie.archive import Archive, segments
from selkie.archive.layout import TimelineRef
from selkie.archive.segments import Record, SegmentError
from selkie.compute.mariadb import COMPUTE_SERVER_ID
from selkie.errors import ArchiveError, InvalidInput, ObjectMissing, StorageError
from selkie.storage.deltas import materialize_image
from selkie.storage.images import INITIAL, ImageRef, list_images
from selkie.storage.replay import ReplayServer, Tools, replay_server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    until_us: int | None = None
    until_seq: int | None = None

    def admits(self, record: Record) -> bool:
        if self.until_seq is not None and record.seq > self.until_seq:
            return False
        return self.until_us is None or record.received_us <= self.until_us


@dataclass(frozen=True)
class Restored:
    base_seq: int
    seq: int  # the GTID sequence number the restored data holds
    replayed: int  # transactions replayed on top of the image
    image_key: str


Tail = tuple[bytes, list[Record]]


def pick_image(
    images: list[ImageRef], target: Target, *, has_ancestor: bool = False
) -> ImageRef | None:
    """The newest image at or before the target. A timeline's initial image holds its data
    as it began (nothing ran before it), so it serves any target inside the timeline; once
    retention has pruned it, a target before the oldest image kept is out of reach. A
    timeline with an ancestor that has no image serving the target: None (the target is
    reached through the ancestor)."""
    if not images:
        if has_ancestor:
            return None
        raise ObjectMissing("the history has no base image")
    eligible = [
        i
        for i in images
        if (target.until_us is None or i.taken_us <= target.until_us)
        and (target.until_seq is None or i.seq <= target.until_seq)
    ]
    if eligible:
        return max(eligible, key=lambda i: (i.seq, i.taken_us))
    first = images[0]
    if has_ancestor and first.kind != INITIAL:
        return None
    if first.kind != INITIAL or (target.until_seq is not None and first.seq > target.until_seq):
        raise InvalidInput(
            "the target is before the history kept (history_retention_seconds): it starts "
            f"at 0-{COMPUTE_SERVER_ID}-{first.seq}, "
            f"{datetime.fromtimestamp(first.taken_us / 1e6, UTC).isoformat()}"
        )
    return first


async def wal_chain(archive: Archive, ref: TimelineRef, after: int) -> list[str]:
    """The log objects that hold every transaction after ``after``, in order; an error if
    the archive holds later transactions that cannot be reached without a gap."""
    ranges: dict[tuple[int, int], str] = {}
    for obj in await archive.list(ref.wal_prefix):
        rng = segments.parse_object_name(obj.key.rsplit("/", 1)[1])
        if rng is not None:
            ranges[rng] = obj.key
    chain = segments.covering_chain(list(ranges), after)
    end = chain[-1][1] if chain else after
    beyond = [r for r in ranges if r[0] > end + 1]
    if beyond:
        first = min(beyond)[0]
        raise ObjectMissing(
            f"the archive misses transactions {end + 1}..{first - 1} of timeline "
            f"{ref.timeline_id}: a log object is missing"
        )
    return [ranges[r] for r in chain]


async def plan(
    archive: Archive,
    ref: TimelineRef,
    target: Target,
    ancestry: Sequence[tuple[TimelineRef, int]] = (),
) -> tuple[ImageRef, list[tuple[TimelineRef, Target]]]:
    """The base image a restore starts from, and the timelines whose logs are applied on
    it, oldest first, each with its own target (an ancestor's is its branch point)."""
    steps: list[tuple[TimelineRef, Target]] = []
    cur, tgt = ref, target
    lineage = list(ancestry)
    while True:
        image = pick_image(await list_images(archive, cur), tgt, has_ancestor=bool(lineage))
        steps.append((cur, tgt))
        if image is not None:
            return image, steps[::-1]
        cur, point = lineage.pop(0)
        tgt = Target(until_seq=point)


async def restore(
    archive: Archive,
    ref: TimelineRef,
    target: Target,
    staging: Path,
    *,
    tools: Tools,
    tail: Tail | None = None,
    ancestry: Sequence[tuple[TimelineRef, int]] = (),
    tail_of: Callable[[TimelineRef], Awaitable[Tail | None]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Restored:
    """Rebuild the timeline's data as of ``target`` in ``staging`` (a new directory).
    ``tail``: transactions the archive does not hold yet (the safekeeper's local log).
    ``ancestry``: the timeline's parent and its parent's, each with the branch point the
    child began at (nearest first); ``tail_of`` gives an ancestor's local log."""
    tools = tools.resolve()

    def say(step: str) -> None:
        if progress is not None:
            progress(step)

    image, steps = await plan(archive, ref, target, ancestry)
    chains = []
    after = image.seq
    for step_ref, step_target in steps:
        chains.append(await wal_chain(archive, step_ref, after))
        after = step_target.until_seq if step_target.until_seq is not None else after
    say(f"restoring base image at {image.seq}")
    await materialize_image(archive, image.key, staging)
    seq = image.seq
    async with replay_server(staging, tools) as server:
        for (step_ref, step_target), chain in zip(steps, chains, strict=True):
            local = (
                tail
                if step_ref == ref
                else (await tail_of(step_ref) if tail_of is not None else None)
            )
            seq = await _feed(archive, server, step_ref, step_target, chain, local, seq)
            point = step_target.until_seq
            if step_ref != ref and point is not None and seq != point:
                raise ObjectMissing(
                    f"the history of timeline {step_ref.timeline_id} ends at {seq}, before the "
                    f"branch point {point} a descendant began at"
                )
        replayed = seq - image.seq
        if replayed:
            say(f"replaying transactions {image.seq + 1}..{seq}")
            await server.apply(
                seq, progress=lambda at: say(f"replayed up to {at} of {image.seq + 1}..{seq}")
            )
        await server.set_position(seq)
        pos = await server.position()
        expected = f"0-{COMPUTE_SERVER_ID}-{seq}" if seq else ""
        if pos != expected:
            raise StorageError(
                f"the restored data is at GTID {pos or '(none)'}, expected {expected}"
            )
    if target.until_seq is not None and seq < target.until_seq:
        raise InvalidInput(
            f"position 0-{COMPUTE_SERVER_ID}-{target.until_seq} is beyond the history "
            f"(it ends at 0-{COMPUTE_SERVER_ID}-{seq})"
        )
    log.info(
        "restored %s at %d (%d replayed on the image, %d timelines)",
        ref.timeline_id,
        seq,
        replayed,
        len(steps),
    )
    return Restored(base_seq=image.seq, seq=seq, replayed=replayed, image_key=image.key)


# How many times a restore lists a timeline's log again when an object it listed is gone
# (the safekeeper replaces the pieces of a segment with the whole segment, then deletes them).
RELISTS = 3


async def _feed(
    archive: Archive,
    server: ReplayServer,
    ref: TimelineRef,
    target: Target,
    chain: list[str],
    local: Tail | None,
    seq: int,
) -> int:
    """Every transaction of the timeline after ``seq`` up to the target, checked to follow
    one another, into the server's relay logs (one per archive object: memory holds one
    object at a time); the last one's sequence number."""
    relists = 0
    while True:
        try:
            for name in chain:
                try:
                    fde, records, _ = segments.decode(segments.decompress(await archive.get(name)))
                except SegmentError as exc:
                    raise StorageError(f"archive object {name} is corrupt: {exc}") from exc
                seq, reached = await _relay(server, name, fde, records, seq, target)
                if reached:
                    return seq
            break
        except ObjectMissing:
            if relists >= RELISTS:
                raise
            relists += 1
            chain = await wal_chain(archive, ref, seq)  # from where it got to
    if local is not None:
        seq, _ = await _relay(server, "the safekeeper's local log", *local, seq, target)
    return seq


async def _relay(
    server: ReplayServer,
    name: str,
    fde: bytes,
    records: list[Record],
    seq: int,
    target: Target,
) -> tuple[int, bool]:
    take, reached = _admitted(name, records, seq, target)
    if take:
        await asyncio.to_thread(server.add_relay_log, fde, [r.events for r in take])
        seq = take[-1].seq
    return seq, reached


def _admitted(
    name: str, records: list[Record], seq: int, target: Target
) -> tuple[list[Record], bool]:
    """The records after ``seq`` up to the target, each following the one before; and
    whether the target was reached (a record beyond it seen)."""
    take: list[Record] = []
    for record in records:
        if record.seq <= seq:
            continue
        if record.seq != seq + 1:
            raise ObjectMissing(f"{name}: transaction {seq + 1} is missing (found {record.seq})")
        if not target.admits(record):
            return take, True
        take.append(record)
        seq = record.seq
    return take, False


__all__ = ["ArchiveError", "Restored", "Target", "Tools", "pick_image", "restore", "wal_chain"]
