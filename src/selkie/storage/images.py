"""Base images: a branch's datadir in the archive, stored incrementally.

A file is cut into fixed 256 KiB chunks; each chunk is stored once per project under the
SHA-256 of its bytes, zstd-compressed (``projects/<p>/chunks/<sha256>``). An image is a
manifest naming, per file, its size, mode and chunks, with the GTID sequence number the
data holds. Only chunks the archive does not have are uploaded, and files whose size,
mtime and inode are those of the previous image of the same datadir are not even read, so
an idle 1 GB branch that changed a few pages uploads a few chunks and a manifest. The
manifest is written last: an image interrupted half-way is invisible (its chunks are
collected as garbage later).

The binary log files are not part of an image (the safekeeper has their content): a
restored datadir gets its GTID state back from the image's sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import zstandard

from selkie.archive import Archive
from selkie.archive.layout import TimelineRef, chunk_key, chunk_prefix, parse_base_name
from selkie.errors import ArchiveError, ObjectMissing

T = TypeVar("T")
CHUNK_BYTES = 256 << 10
# Images are background work: their reading, hashing and compressing runs in threads of
# their own at a lower CPU priority (nice 10), so a branch being made, a wake or a query
# on a busy machine is not slowed by the image a suspend started.
IMAGE_THREADS = 2
IMAGE_NICE = 10
MANIFEST_VERSION = 1
UPLOADS_IN_FLIGHT = 8
# What an image leaves out: the binary log (in the safekeeper and the archive), the
# temporary tablespace (recreated at start), runtime files.
_SKIP_PREFIXES = ("binlog.", "#sql", "ibtmp", "xtrabackup_", "backup-my.cnf", "mariadb_backup")
_SKIP_SUFFIXES = (".pid", ".sock", ".err")


def _lower_priority() -> None:
    with contextlib.suppress(OSError):  # not permitted, or not Linux: normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IMAGE_NICE)


_IMAGE_POOL = ThreadPoolExecutor(
    IMAGE_THREADS, thread_name_prefix="selkie-image", initializer=_lower_priority
)


async def in_image_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in one of the images' low-priority threads."""
    return await asyncio.get_running_loop().run_in_executor(_IMAGE_POOL, partial(fn, *args))


def skipped(relpath: str) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    return name.startswith(_SKIP_PREFIXES) or name.endswith(_SKIP_SUFFIXES)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mode: int
    chunks: list[str]


@dataclass(frozen=True)
class PageDelta:
    """A file of a delta image: its size and mode now, and the numbers of its 16 KiB pages
    that changed (their bytes follow one another in the image's blob)."""

    path: str
    size: int
    mode: int
    pages: list[int]


@dataclass(frozen=True)
class Manifest:
    """A base image. A *full* image lists every file's chunks; a *delta* image names the
    image it builds on (``parent``) and lists only the pages that changed since, stored in
    one compressed object (``blob``)."""

    project_id: str
    timeline_id: str
    seq: int
    taken_us: int
    kind: str  # "initial" | "suspend" | "hot"
    files: list[FileEntry] = field(default_factory=list)
    version: int = MANIFEST_VERSION
    # The bytes of the datadir the image holds.
    total_size: int = 0
    # Delta images only.
    parent: str | None = None
    depth: int = 0
    deltas: list[PageDelta] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    blob: str | None = None
    blob_sha256: str | None = None

    @property
    def ref(self) -> TimelineRef:
        return TimelineRef(self.project_id, self.timeline_id)

    @property
    def key(self) -> str:
        return self.ref.base_key(self.seq, self.taken_us, self.kind)

    @property
    def size(self) -> int:
        return self.total_size or sum(f.size for f in self.files)

    @property
    def blob_key(self) -> str:
        return self.key.removesuffix(".json.zst") + ".pages.zst"

    def encode(self) -> bytes:
        return zstandard.ZstdCompressor(level=3).compress(json.dumps(asdict(self)).encode())

    @classmethod
    def decode(cls, data: bytes, key: str) -> Manifest:
        try:
            raw = json.loads(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30))
            files = [FileEntry(**f) for f in raw.pop("files")]
            deltas = [PageDelta(**d) for d in raw.pop("deltas", [])]
            return cls(files=files, deltas=deltas, **raw)
        except (zstandard.ZstdError, ValueError, TypeError, KeyError) as exc:
            raise ObjectMissing(f"archive object {key} is not a readable base image") from exc


# Kinds of base image: the data a timeline began with, a clean datadir after a suspend, a
# hot copy of a running compute.
INITIAL, SUSPEND, HOT = "initial", "suspend", "hot"


@dataclass(frozen=True)
class ImageRef:
    key: str
    seq: int
    taken_us: int
    kind: str


@dataclass
class Cached:
    """What an image learned of one datadir file: its (size, mtime_ns, inode) then, its
    chunk digests (full images) and its 16 KiB pages' digests (16 bytes each)."""

    stamp: tuple[int, int, int]
    chunks: list[str] | None
    pages: bytes


@dataclass
class ImageCache:
    """What the last image made of a datadir holds, file by file: the next image of the same
    datadir reads only files that changed since, and may be a delta of it."""

    parent: Manifest | None = None
    files: dict[str, Cached] = field(default_factory=dict)


def inherited(cache: ImageCache, datadir: Path) -> ImageCache:
    """What a copy of a datadir (a new branch cloned or copied from it) can take from the
    source's cache: files whose size and modification time are the source's when it was
    imaged (copies keep them) are known by their digests and not read again; everything
    else is read. No parent manifest: a new timeline's first image is a full one."""
    files: dict[str, Cached] = {}
    for rel, hit in cache.files.items():
        try:
            st = (datadir / rel).stat()
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == hit.stamp[:2]:
            files[rel] = Cached((st.st_size, st.st_mtime_ns, st.st_ino), hit.chunks, hit.pages)
    return ImageCache(parent=None, files=files)


class ChunkIndex:
    """Which chunks a project's archive holds, listed once and kept up to date by this
    process (images add to it, garbage collection removes from it)."""

    def __init__(self) -> None:
        self._known: dict[str, set[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, project_id: str) -> asyncio.Lock:
        """Held while an image is made or chunks are collected: neither sees the other
        half-done."""
        return self._locks.setdefault(project_id, asyncio.Lock())

    async def known(self, archive: Archive, project_id: str) -> set[str]:
        if project_id not in self._known:
            prefix = chunk_prefix(project_id)
            self._known[project_id] = {o.key[len(prefix) :] for o in await archive.list(prefix)}
        return self._known[project_id]

    def forget(self, project_id: str, digests: set[str] | None = None) -> None:
        if digests is None:
            self._known.pop(project_id, None)
        elif project_id in self._known:
            self._known[project_id] -= digests


def walk_datadir(datadir: Path) -> list[tuple[str, os.stat_result]]:
    out = []
    for root, dirs, files in os.walk(datadir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(datadir).as_posix()
            if skipped(rel) or not path.is_file() or path.is_symlink():
                continue
            out.append((rel, path.stat()))
    return out


# Read at most this much of a file per step, so memory stays bounded whatever its size.
STEP_BYTES = 64 << 20
PAGE_BYTES = 16 << 10  # InnoDB's page: what a delta image tracks


def page_digests(data: bytes) -> bytes:
    """16-byte digests of each 16 KiB page of ``data`` (whose length is whole pages, or
    the file's end)."""
    return b"".join(
        hashlib.blake2b(data[i : i + PAGE_BYTES], digest_size=16).digest()
        for i in range(0, len(data), PAGE_BYTES)
    )


def _chunk_file(
    path: Path, offset: int, known: set[str], stop: threading.Event
) -> tuple[list[str], bytes, list[tuple[str, bytes]], bool]:
    """From ``offset`` on (up to STEP_BYTES): the digests of a file's chunks and of its
    pages, the compressed chunks the archive lacks, and whether the file ended (blocking)."""
    digests: list[str] = []
    pages: list[bytes] = []
    new: list[tuple[str, bytes]] = []
    compressor = zstandard.ZstdCompressor(level=3)
    seen: set[str] = set()
    with open(path, "rb") as fh:
        fh.seek(offset)
        for _ in range(STEP_BYTES // CHUNK_BYTES):
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                return digests, b"".join(pages), new, True
            if stop.is_set():
                raise asyncio.CancelledError
            digest = hashlib.sha256(chunk).hexdigest()
            digests.append(digest)
            pages.append(page_digests(chunk))
            if digest not in known and digest not in seen:
                seen.add(digest)
                new.append((digest, compressor.compress(chunk)))
            if len(chunk) < CHUNK_BYTES:
                return digests, b"".join(pages), new, True
    return digests, b"".join(pages), new, False


async def make_image(
    archive: Archive,
    chunks: ChunkIndex,
    ref: TimelineRef,
    datadir: Path,
    *,
    seq: int,
    kind: str,
    taken_us: int,
    cache: ImageCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Store ``datadir`` (which must not change meanwhile) as a full base image of the
    timeline at ``seq``. ``cache`` skips reading files unchanged since the image it was
    filled by, and is refilled. Cancelling stops at the next chunk; nothing visible is
    left (see :mod:`selkie.storage.deltas` for images that store only changed pages)."""
    stop = threading.Event()
    sem = asyncio.Semaphore(UPLOADS_IN_FLIGHT)
    new_files: dict[str, Cached] = {}
    entries: list[FileEntry] = []
    uploaded = 0

    async def upload(digest: str, data: bytes) -> None:
        nonlocal uploaded
        async with sem:
            await archive.put(chunk_key(ref.project_id, digest), data)
        known.add(digest)
        uploaded += len(data)
        if progress is not None:
            progress(uploaded)

    async with chunks.lock(ref.project_id):
        known = await chunks.known(archive, ref.project_id)
        try:
            for rel, st in await asyncio.to_thread(walk_datadir, datadir):
                stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
                hit = cache.files.get(rel) if cache is not None else None
                if (
                    hit is not None
                    and hit.stamp == stamp
                    and hit.chunks is not None
                    and all(d in known for d in hit.chunks)
                ):
                    digests, pages = hit.chunks, hit.pages
                else:
                    digests, parts = [], []
                    ended = False
                    while not ended:
                        part, page_part, new, ended = await in_image_thread(
                            _chunk_file, datadir / rel, len(digests) * CHUNK_BYTES, known, stop
                        )
                        await asyncio.gather(*(upload(d, data) for d, data in new))
                        digests += part
                        parts.append(page_part)
                    pages = b"".join(parts)
                new_files[rel] = Cached(stamp, digests, pages)
                entries.append(FileEntry(rel, st.st_size, st.st_mode & 0o777, digests))
        except BaseException:
            stop.set()
            raise
        manifest = Manifest(
            project_id=ref.project_id,
            timeline_id=ref.timeline_id,
            seq=seq,
            taken_us=taken_us,
            kind=kind,
            files=entries,
            total_size=sum(e.size for e in entries),
        )
        await archive.put(manifest.key, manifest.encode())
    if cache is not None:
        cache.parent, cache.files = manifest, new_files
    return manifest


async def list_images(archive: Archive, ref: TimelineRef) -> list[ImageRef]:
    """The timeline's base images, oldest first."""
    out = []
    for obj in await archive.list(ref.base_prefix):
        parsed = parse_base_name(obj.key.rsplit("/", 1)[1])
        if parsed is not None:
            out.append(ImageRef(obj.key, *parsed))
    return sorted(out, key=lambda i: (i.seq, i.taken_us))


async def read_manifest(archive: Archive, key: str) -> Manifest:
    return Manifest.decode(await archive.get(key), key)


async def materialize(
    archive: Archive,
    manifest: Manifest,
    target: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the image's files under ``target`` (an empty directory), checking every chunk
    against its digest. A missing or corrupt chunk raises ObjectMissing naming it."""
    sem = asyncio.Semaphore(UPLOADS_IN_FLIGHT)
    done = 0

    async def fetch(digest: str) -> bytes:
        key = chunk_key(manifest.project_id, digest)
        async with sem:
            data = await archive.get(key)
        try:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=CHUNK_BYTES)
        except zstandard.ZstdError as exc:
            raise ObjectMissing(f"archive object {key} is corrupt (not zstd)") from exc
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ObjectMissing(f"archive object {key} is corrupt (content does not match)")
        return raw

    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    for entry in manifest.files:
        path = target / entry.path
        if ".." in Path(entry.path).parts or Path(entry.path).is_absolute():
            raise ArchiveError(f"base image {manifest.key} names an unsafe path {entry.path!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = await asyncio.to_thread(open, path, "wb")
        try:
            # A window of chunks in flight, written in order.
            pending: list[asyncio.Task[bytes]] = []
            for digest in entry.chunks:
                pending.append(asyncio.ensure_future(fetch(digest)))
                if len(pending) >= UPLOADS_IN_FLIGHT:
                    data = await pending.pop(0)
                    await asyncio.to_thread(fh.write, data)
                    done += len(data)
            for task in pending:
                data = await task
                await asyncio.to_thread(fh.write, data)
                done += len(data)
            await asyncio.to_thread(_sync_close, fh)
        except BaseException:
            for task in pending:
                task.cancel()
            with contextlib.suppress(OSError):
                fh.close()
            raise
        if progress is not None:
            progress(done)
        os.chmod(path, entry.mode or 0o660)
        if path.stat().st_size != entry.size:
            raise ObjectMissing(f"base image {manifest.key}: {entry.path} came back truncated")


def _sync_close(fh: object) -> None:
    import io

    assert isinstance(fh, io.BufferedWriter)
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
