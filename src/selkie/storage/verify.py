"""The archive proves itself: every base image, delta chain and log segment read back and
checked, without restoring anything.

For each timeline of a project (or of every project): each base image's manifest is read;
a full image's chunks are fetched, decompressed and compared with their SHA-256 (each chunk
once, however many images share it); a delta image's parent must exist and its page blob
match its digest. Each log segment is decompressed and decoded record by record (every
record carries a CRC), its records must be the sequence numbers its name says, in order,
and together the segments must hold every sequence number from the oldest base image on,
without a gap. What is missing or corrupt is named (object key and problem); nothing is
changed. ``selkie archive verify`` prints the report and exits 1 when anything is found.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import zstandard

from selkie.archive import Archive
from selkie.archive.layout import TimelineRef, chunk_key, project_prefix
from selkie.archive.segments import (
    SegmentError,
    covering_chain,
    decode,
    decompress,
    parse_object_name,
)
from selkie.errors import ArchiveError
from selkie.storage.images import CHUNK_BYTES, Manifest, list_images, read_manifest

CHECKS_IN_FLIGHT = 8
# The page blob of one delta image, at most (as deltas.py reads it).
_MAX_BLOB = 1 << 31


@dataclass(frozen=True)
class Finding:
    key: str
    problem: str


@dataclass
class Report:
    timelines: int = 0
    images: int = 0
    chunks: int = 0
    segments: int = 0
    bytes_read: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


async def project_ids(archive: Archive) -> list[str]:
    """Every project the archive holds anything of."""
    seen: set[str] = set()
    for obj in await archive.list("projects/"):
        parts = obj.key.split("/")
        if len(parts) > 2:
            seen.add(parts[1])
    return sorted(seen)


async def verify(archive: Archive, project_id: str | None = None) -> Report:
    """Check the project's history (every project's when None)."""
    report = Report()
    checked: set[str] = set()
    sem = asyncio.Semaphore(CHECKS_IN_FLIGHT)
    for pid in [project_id] if project_id else await project_ids(archive):
        for timeline_id in await _timelines(archive, pid):
            report.timelines += 1
            ref = TimelineRef(pid, timeline_id)
            oldest = await _images(archive, ref, report, checked, sem)
            await _log(archive, ref, oldest, report, sem)
    return report


async def _timelines(archive: Archive, project_id: str) -> list[str]:
    prefix = project_prefix(project_id) + "timelines/"
    return sorted({o.key[len(prefix) :].split("/", 1)[0] for o in await archive.list(prefix)})


async def _get(archive: Archive, key: str, report: Report, sem: asyncio.Semaphore) -> bytes | None:
    async with sem:
        try:
            data = await archive.get(key)
        except ArchiveError as exc:
            report.findings.append(Finding(key, f"cannot be read: {exc.message}"))
            return None
    report.bytes_read += len(data)
    return data


def _check_digest(report: Report, key: str, data: bytes, digest: str | None, limit: int) -> None:
    """A zstd object whose content must hash (SHA-256) to ``digest``."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError:
        report.findings.append(Finding(key, "corrupt (not zstd)"))
        return
    if hashlib.sha256(raw).hexdigest() != digest:
        report.findings.append(Finding(key, "corrupt (content does not match)"))


async def _images(
    archive: Archive,
    ref: TimelineRef,
    report: Report,
    checked: set[str],
    sem: asyncio.Semaphore,
) -> int | None:
    """Check the timeline's images; the oldest readable one's seq (None: no image)."""
    keys = {i.key for i in await list_images(archive, ref)}
    oldest: int | None = None
    for image in await list_images(archive, ref):
        try:
            manifest = await read_manifest(archive, image.key)
        except ArchiveError as exc:
            report.findings.append(Finding(image.key, exc.message))
            continue
        report.images += 1
        oldest = manifest.seq if oldest is None else min(oldest, manifest.seq)
        if manifest.parent is not None:
            await _delta(archive, manifest, keys, report, sem)
        digests = {d for f in manifest.files for d in f.chunks} - checked
        checked |= digests
        await asyncio.gather(*(_chunk(archive, ref.project_id, d, report, sem) for d in digests))
    return oldest


async def _delta(
    archive: Archive, manifest: Manifest, keys: set[str], report: Report, sem: asyncio.Semaphore
) -> None:
    if manifest.parent not in keys:
        report.findings.append(
            Finding(manifest.key, f"its parent image {manifest.parent} is missing")
        )
    if manifest.blob is None:
        return
    data = await _get(archive, manifest.blob, report, sem)
    if data is not None:
        _check_digest(report, manifest.blob, data, manifest.blob_sha256, _MAX_BLOB)


async def _chunk(
    archive: Archive, project_id: str, digest: str, report: Report, sem: asyncio.Semaphore
) -> None:
    key = chunk_key(project_id, digest)
    data = await _get(archive, key, report, sem)
    if data is not None:
        report.chunks += 1
        _check_digest(report, key, data, digest, CHUNK_BYTES)


async def _log(
    archive: Archive, ref: TimelineRef, oldest: int | None, report: Report, sem: asyncio.Semaphore
) -> None:
    objects = {}
    for obj in await archive.list(ref.wal_prefix):
        parsed = parse_object_name(obj.key.rsplit("/", 1)[1])
        if parsed is not None:
            objects[parsed] = obj.key
    await asyncio.gather(*(_segment(archive, key, r, report, sem) for r, key in objects.items()))
    if not objects:
        return
    if oldest is None:
        # A timeline with ancestors and no image yet: its log from where it begins.
        oldest = min(first for first, _ in objects) - 1
    # Every sequence number from the oldest image on, as far as the log reaches.
    last = max(r[1] for r in objects)
    chain = covering_chain(list(objects), oldest)
    reached = max([oldest, *(end for _, end in chain)])
    if reached < last:
        report.findings.append(
            Finding(ref.wal_prefix, f"the log is missing sequence numbers after {reached}")
        )


async def _segment(
    archive: Archive, key: str, span: tuple[int, int], report: Report, sem: asyncio.Semaphore
) -> None:
    data = await _get(archive, key, report, sem)
    if data is None:
        return
    report.segments += 1
    try:
        _, records, _ = await asyncio.to_thread(lambda: decode(decompress(data)))
    except SegmentError as exc:
        report.findings.append(Finding(key, f"corrupt: {exc}"))
        return
    seqs = [r.seq for r in records]
    if seqs != list(range(span[0], span[1] + 1)):
        report.findings.append(
            Finding(key, f"holds sequence numbers {_span(seqs)}, not {span[0]}-{span[1]}")
        )


def _span(seqs: list[int]) -> str:
    return f"{seqs[0]}-{seqs[-1]} ({len(seqs)})" if seqs else "none"
