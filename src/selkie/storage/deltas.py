"""Delta base images: only the 16 KiB pages that changed since the previous image of the
same datadir, packed into one compressed object.

InnoDB changes data a page at a time, and a small change touches pages all over a table
(1 MB of rows updated across a 1 GB table dirties about a thousand pages, one in each
256 KiB chunk: a full image would upload a quarter of the table). A delta image names its
parent and lists, per file that changed, its size now and the numbers of its changed pages,
whose bytes follow one another in the image's blob (``….pages.zst``, checked by SHA-256).
Restoring it is restoring the parent, then writing the pages.

A chain of deltas ends in a full image. A full one is made instead when there is no parent
(the first image, or this process does not know the datadir's previous image), when the
chain is ``MAX_DEPTH`` long, or when the pages that changed exceed ``MAX_DELTA_BYTES`` or a
quarter of the datadir (then chunk-level deduplication uploads little more).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import zstandard

from selkie.archive import Archive
from selkie.archive.layout import TimelineRef
from selkie.errors import ObjectMissing
from selkie.storage.images import (
    PAGE_BYTES,
    STEP_BYTES,
    Cached,
    ChunkIndex,
    ImageCache,
    Manifest,
    PageDelta,
    in_image_thread,
    make_image,
    materialize,
    page_digests,
    read_manifest,
    walk_datadir,
)

MAX_DEPTH = 16
MAX_DELTA_BYTES = 256 << 20
DIGEST = 16


class _TooBig(Exception):
    """The changed pages are too many for a delta: make a full image."""


# A file that grows (InnoDB extends its files 64 MiB at a time) gets zeros: such pages past
# the old end are not stored, the file's new size brings them.
ZERO_PAGE = page_digests(bytes(PAGE_BYTES))


def _diff_file(
    path: Path, old: bytes, old_size: int, budget: int, stop: threading.Event
) -> tuple[bytes, list[int], list[bytes]]:
    """A file's page digests, and the numbers and bytes of the pages that differ from
    ``old`` (the digests of its previous content, ``old_size`` bytes). _TooBig past
    ``budget`` bytes."""
    digests: list[bytes] = []
    numbers: list[int] = []
    data: list[bytes] = []
    page = 0
    with open(path, "rb") as fh:
        while block := fh.read(STEP_BYTES):
            if stop.is_set():
                raise asyncio.CancelledError
            new = page_digests(block)
            digests.append(new)
            for i in range(0, len(new), DIGEST):
                no = page + i // DIGEST
                if no * PAGE_BYTES >= old_size and new[i : i + DIGEST] == ZERO_PAGE:
                    continue
                if old[no * DIGEST : (no + 1) * DIGEST] != new[i : i + DIGEST]:
                    numbers.append(no)
                    start = i // DIGEST * PAGE_BYTES
                    data.append(block[start : start + PAGE_BYTES])
                    budget -= PAGE_BYTES
                    if budget < 0:
                        raise _TooBig
            page += len(new) // DIGEST
    return b"".join(digests), numbers, data


async def make_delta(
    archive: Archive,
    ref: TimelineRef,
    datadir: Path,
    *,
    seq: int,
    kind: str,
    taken_us: int,
    cache: ImageCache,
) -> Manifest | None:
    """A delta image of ``datadir`` against ``cache.parent``, or None when a full image is
    due (no parent, the chain is long, too much changed)."""
    parent = cache.parent
    if parent is None or parent.depth + 1 >= MAX_DEPTH:
        return None
    stop = threading.Event()
    entries = await asyncio.to_thread(walk_datadir, datadir)
    total = sum(st.st_size for _, st in entries)
    budget = min(MAX_DELTA_BYTES, total // 4)
    deltas: list[PageDelta] = []
    blob: list[bytes] = []
    files: dict[str, Cached] = {}
    try:
        for rel, st in entries:
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
            hit = cache.files.get(rel)
            if hit is not None and hit.stamp == stamp:
                files[rel] = hit
                continue
            old, old_size = (hit.pages, hit.stamp[0]) if hit is not None else (b"", 0)
            pages, numbers, changed = await in_image_thread(
                _diff_file, datadir / rel, old, old_size, budget, stop
            )
            budget -= len(changed) * PAGE_BYTES
            files[rel] = Cached(stamp, None, pages)
            if numbers or hit is None or hit.stamp[0] != st.st_size:
                deltas.append(PageDelta(rel, st.st_size, st.st_mode & 0o777, numbers))
                blob.extend(changed)
    except _TooBig:
        return None
    except BaseException:
        stop.set()
        raise
    removed = sorted(set(cache.files) - set(files))
    raw = b"".join(blob)
    manifest = Manifest(
        project_id=ref.project_id,
        timeline_id=ref.timeline_id,
        seq=seq,
        taken_us=taken_us,
        kind=kind,
        total_size=total,
        parent=parent.key,
        depth=parent.depth + 1,
        deltas=deltas,
        removed=removed,
        blob_sha256=hashlib.sha256(raw).hexdigest(),
    )
    manifest = dataclasses.replace(manifest, blob=manifest.blob_key)
    packed = await in_image_thread(zstandard.ZstdCompressor(level=3).compress, raw)
    await archive.put(manifest.blob_key, packed)
    await archive.put(manifest.key, manifest.encode())
    cache.parent, cache.files = manifest, files
    return manifest


async def store_image(
    archive: Archive,
    chunks: ChunkIndex,
    ref: TimelineRef,
    datadir: Path,
    *,
    seq: int,
    kind: str,
    taken_us: int,
    cache: ImageCache | None = None,
) -> Manifest:
    """A base image of ``datadir``: a delta of the previous image of it when that is
    small, else a full one."""
    if cache is not None:
        delta = await make_delta(
            archive, ref, datadir, seq=seq, kind=kind, taken_us=taken_us, cache=cache
        )
        if delta is not None:
            return delta
    return await make_image(
        archive, chunks, ref, datadir, seq=seq, kind=kind, taken_us=taken_us, cache=cache
    )


async def chain(archive: Archive, key: str) -> list[Manifest]:
    """The image and its parents, down to the full image they build on (that one first)."""
    out = [await read_manifest(archive, key)]
    while out[-1].parent is not None:
        parent = out[-1].parent
        if len(out) > MAX_DEPTH + 1:
            raise ObjectMissing(f"base image {key} has a chain of parents that does not end")
        out.append(await read_manifest(archive, parent))
    return out[::-1]


def _apply(target: Path, manifest: Manifest, raw: bytes) -> None:
    offset = 0
    for entry in manifest.deltas:
        path = target / entry.path
        if ".." in Path(entry.path).parts or Path(entry.path).is_absolute():
            raise ObjectMissing(f"base image {manifest.key} names an unsafe path {entry.path!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "r+b" if path.exists() else "w+b") as fh:
            for no in entry.pages:
                length = min(PAGE_BYTES, entry.size - no * PAGE_BYTES)
                fh.seek(no * PAGE_BYTES)
                fh.write(raw[offset : offset + length])
                offset += length
            fh.truncate(entry.size)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, entry.mode or 0o660)
    if offset != len(raw):
        raise ObjectMissing(f"base image {manifest.key}: its pages do not match its blob")
    for rel in manifest.removed:
        (target / rel).unlink(missing_ok=True)


async def materialize_image(
    archive: Archive,
    key: str,
    target: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write the image ``key`` (full, or a delta and its chain) under ``target``."""
    images = await chain(archive, key)
    await materialize(archive, images[0], target, progress=progress)
    for manifest in images[1:]:
        assert manifest.blob is not None
        data = await archive.get(manifest.blob)
        try:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DELTA_BYTES)
        except zstandard.ZstdError as exc:
            raise ObjectMissing(f"archive object {manifest.blob} is corrupt (not zstd)") from exc
        if hashlib.sha256(raw).hexdigest() != manifest.blob_sha256:
            raise ObjectMissing(
                f"archive object {manifest.blob} is corrupt (content does not match)"
            )
        await asyncio.to_thread(_apply, target, manifest, raw)
    return images[-1]
