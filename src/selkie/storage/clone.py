"""Copies of datadirs that share the source's blocks where the filesystem can (XFS with
reflink, btrfs): a clone of a file is a new file pointing at the same extents, made in
microseconds whatever its size; the two diverge block by block as either is written
(copy-on-write). Elsewhere the copy is an ordinary one.

Whether a directory's filesystem clones is found once per device by cloning a small test
file there (``FICLONE``), then remembered. ``shared_bytes`` reads a file's extents
(``FIEMAP``) to tell how much of it is still shared, for storage accounting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
from pathlib import Path

log = logging.getLogger(__name__)

FICLONE = 0x40049409
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_SHARED = 0x2000
FIEMAP_EXTENT_LAST = 0x1
_NOT_SUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}

_by_device: dict[int, bool] = {}


def clone_file(src: Path, dst: Path) -> None:
    """``dst`` as a clone of ``src`` (OSError where the filesystem cannot)."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    shutil.copystat(src, dst)


def can_clone(directory: Path) -> bool:
    """Whether files in ``directory`` can be cloned (tried once per filesystem)."""
    device = directory.stat().st_dev
    known = _by_device.get(device)
    if known is not None:
        return known
    probe = directory / ".selkie-clone-probe"
    copy = directory / ".selkie-clone-probe.copy"
    try:
        probe.write_bytes(b"selkie" * 1024)
        clone_file(probe, copy)
        result = True
    except OSError as exc:
        if exc.errno not in _NOT_SUPPORTED:
            log.warning("could not test %s for clones: %s", directory, exc)
        result = False
    finally:
        for path in (probe, copy):
            path.unlink(missing_ok=True)
    _by_device[device] = result
    log.info(
        "%s: %s", directory, "copy-on-write clones (instant branches)" if result else "plain copies"
    )
    return result


def copy_tree(
    src: Path, dst: Path, *, clone: bool | None = None, last: tuple[str, ...] = ()
) -> None:
    """``dst`` (which must not exist) as a copy of the tree ``src``: clones where the
    filesystem can (``clone`` None: find out), else ordinary copies. Files named in ``last``
    are copied after all others (a running server's redo log, say)."""
    if clone is None:
        clone = can_clone(src.parent)
    copy = _clone_or_copy if clone else shutil.copy2
    dst.mkdir()
    deferred: list[tuple[Path, Path]] = []
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in dirs:
            source = Path(root) / name
            target = dst / rel / name
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            else:
                target.mkdir()
        for name in files:
            source, target = Path(root) / name, dst / rel / name
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            elif name in last:
                deferred.append((source, target))
            else:
                copy(source, target)
    for source, target in deferred:
        copy(source, target)


def _clone_or_copy(src: Path, dst: Path) -> None:
    try:
        clone_file(src, dst)
    except OSError as exc:
        if exc.errno not in _NOT_SUPPORTED:
            raise
        shutil.copy2(src, dst)


def shared_bytes(path: Path) -> int:
    """Bytes of ``path`` in extents the filesystem says are shared with another file (0
    where it cannot tell)."""
    shared = 0
    start = 0
    count = 256
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        while True:
            header = struct.pack("=QQLLLL", start, 0xFFFFFFFFFFFFFFFF, 0, 0, count, 0)
            buf = bytearray(header + b"\0" * (56 * count))
            fcntl.ioctl(fh.fileno(), FS_IOC_FIEMAP, buf)
            mapped = struct.unpack_from("=L", buf, 20)[0]
            if mapped == 0:
                break
            last = False
            for i in range(mapped):
                logical, _physical, length, _r1, _r2, flags = struct.unpack_from(
                    "=QQQQQL", buf, 32 + 56 * i
                )
                if flags & FIEMAP_EXTENT_SHARED:
                    shared += length
                start = logical + length
                last = last or bool(flags & FIEMAP_EXTENT_LAST)
            if last:
                break
    return shared
