"""The archive in a local directory (``file:///abs/path``): the embedded default.

Each object is a file under the root. A put writes a temporary file beside the target,
fsyncs it, renames it into place and fsyncs the directory, so a crash leaves the old object
or the new one. Temporary files left by a crash end in ``.part`` and are never listed.
Point it at another disk (or a network filesystem) to survive the loss of the data dir's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from selkie.archive.base import Archive, ObjectInfo, check_key
from selkie.errors import ArchiveError, ObjectMissing

PART_SUFFIX = ".part"


def private_dir(path: Path) -> None:
    """Make ``path`` (and its parents) exist, and ``path`` Selkie's alone (0700): the
    archive and the safekeeper's log hold every tenant's history, which the unprivileged
    user computes run as must not read."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.geteuid() and path.stat().st_mode & 0o077:
        path.chmod(0o700)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArchive(Archive):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.location = f"file://{self.root}"
        self._private = False

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _put(self, key: str, data: bytes) -> None:
        if not self._private:
            private_dir(self.root)
            self._private = True
        target = self._path(key)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(target)
            fsync_dir(target.parent)
        finally:
            tmp.unlink(missing_ok=True)

    async def put(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._put, key, data)
        except OSError as exc:
            raise ArchiveError(f"archive: cannot write {key}: {exc.strerror}") from exc

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise ObjectMissing(f"archive object {key} is missing") from exc
        except OSError as exc:
            raise ArchiveError(f"archive: cannot read {key}: {exc.strerror}") from exc

    def _list(self, prefix: str) -> list[ObjectInfo]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.endswith(PART_SUFFIX):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    out.append(
                        ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
                    )
        return sorted(out, key=lambda o: o.key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        try:
            return await asyncio.to_thread(self._list, prefix)
        except OSError as exc:
            raise ArchiveError(f"archive: cannot list {prefix}: {exc.strerror}") from exc

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    async def delete(self, keys: Iterable[str]) -> None:
        try:
            await asyncio.to_thread(self._delete, list(keys))
        except OSError as exc:
            raise ArchiveError(f"archive: cannot delete: {exc.strerror}") from exc
