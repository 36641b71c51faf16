"""An XFS filesystem with reflink on a loop device, for the copy-on-write tests: made once
per test session (root and a loop device needed; under CI=true their absence fails)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_service

SIZE = "4G"  # sparse: only what the tests write takes disk space


@pytest.fixture(scope="session")
def xfs_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        need_service("an XFS loop mount", "mounting a loop device needs root")
    if shutil.which("mkfs.xfs") is None:
        need_service("an XFS loop mount", "mkfs.xfs not found (make setup installs xfsprogs)")
    work = Path(tempfile.mkdtemp(prefix="selkie-xfs-", dir="/tmp"))
    image, mount = work / "xfs.img", work / "mnt"
    mount.mkdir()
    try:
        subprocess.run(["truncate", "-s", SIZE, str(image)], check=True)
        subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
        done = subprocess.run(
            ["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True
        )
        if done.returncode != 0:
            need_service("an XFS loop mount", done.stderr.strip() or "mount failed")
        try:
            yield mount
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
