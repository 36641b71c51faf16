"""Local storage: one datadir per branch under ``<data_dir>/branches/<branch_id>``.

A new project's first branch is a copy of a template datadir that ``mariadb-install-db``
makes once (so creating a project costs a file copy, not a server bootstrap). A branch of a
suspended parent is a file copy; of a running parent, a ``mariadb-backup`` hot copy and
``--prepare``. Copies are made in a temporary directory and renamed into place, so a crash
never leaves a half-made datadir that looks finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import secrets
import shutil
from pathlib import Path

from selkie.archive.binlog import domain_seq, file_position
from selkie.archive.local import fsync_dir
from selkie.compute.base import ComputeInfo
from selkie.errors import StorageError
from selkie.model import ProjectSettings
from selkie.storage.base import ParentState, StorageDriver
from selkie.storage.clone import can_clone, copy_tree, shared_bytes

log = logging.getLogger(__name__)

# In a datadir: the id of the timeline (line of history) its data belongs to.
TIMELINE_MARKER = "selkie-timeline"
BINLOG_INDEX = "binlog.index"
# Directories beside the datadirs that a crash may leave: staged copies and restores,
# datadirs being replaced.
_LEFTOVERS = (".tmp-", ".restore-", ".old-")


def backup_position(target: Path) -> int:
    """The GTID sequence number (domain 0) of a mariadb-backup copy, from the binlog
    coordinates it records (``file<TAB>position<TAB>gtid list``); 0 when none."""
    try:
        fields = (target / "xtrabackup_binlog_info").read_text().split("\t")
    except OSError:
        return 0
    return domain_seq(fields[2] if len(fields) > 2 else "")


def datadir_position(datadir: Path) -> int:
    """The GTID sequence number (domain 0) a stopped datadir's data holds, read from its
    binary log; 0 when it has none (blocking)."""
    index = datadir / BINLOG_INDEX
    if not index.exists():
        return 0
    names = index.read_text().split()
    for name in reversed(names):
        path = datadir / Path(name).name
        if path.exists() and path.stat().st_size:
            # Mapped, not read: only the file's head and tail are touched.
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return file_position(m)
    return 0


# The format description event's flag a server sets while its binary log file is open and
# clears when it closes the file cleanly (a file left "in use" means a crash-consistent copy).
_BINLOG_IN_USE = 0x0001
_FDE_FLAGS = slice(4 + 17, 4 + 19)  # after the file's magic, in the event header


def crash_consistent(datadir: Path) -> bool:
    """Whether a stopped datadir was not shut down cleanly: its last binary log file is
    still marked in use (a copy of a running server, or a crash). Its recovery needs that
    binary log (transactions prepared in InnoDB are committed by it), blocking."""
    index = datadir / BINLOG_INDEX
    if not index.exists():
        return False
    for name in reversed(index.read_text().split()):
        path = datadir / Path(name).name
        if path.exists():
            with path.open("rb") as f:
                head = f.read(_FDE_FLAGS.stop)
            return len(head) == _FDE_FLAGS.stop and bool(
                int.from_bytes(head[_FDE_FLAGS], "little") & _BINLOG_IN_USE
            )
    return False


def _find(binary: str) -> str:
    return shutil.which(binary) or f"/usr/bin/{binary}"


async def run_tool(*argv: str, cwd: Path | None = None) -> str:
    """Run a tool; its combined output on success, StorageError with it on failure."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
        )
    except OSError as exc:
        raise StorageError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        lines = text.strip().splitlines()
        # The lines that say what went wrong, not the tool's generic advice that follows.
        errors = [x for x in lines if "ERROR" in x or "rror:" in x] or lines[-10:]
        raise StorageError(
            f"{Path(argv[0]).name} failed ({proc.returncode}): " + "\n".join(errors[:10])
        )
    return text


def _dir_size(path: Path, *, unshared: bool = False) -> int:
    """Bytes the files under ``path`` occupy; with ``unshared``, less the extents they
    share with other files (clones)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            file = os.path.join(root, name)
            with contextlib.suppress(OSError):
                size = os.lstat(file).st_blocks * 512
                if unshared:
                    size = max(0, size - shared_bytes(Path(file)))
                total += size
    return total


class LocalStorage(StorageDriver):
    def __init__(self, *, data_dir: Path, install_db: str = "", backup: str = "") -> None:
        self.root = (data_dir / "branches").resolve()
        self.template = (data_dir / "template").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)  # computes pass to their own datadir, never list others
        self.install_db = install_db or _find("mariadb-install-db")
        self.backup = backup or _find("mariadb-backup")
        self._template_lock = asyncio.Lock()
        self._branch_locks: dict[str, asyncio.Lock] = {}

    def datadir(self, branch_id: str) -> Path:
        return self.root / branch_id

    def compute_datadir(self, branch_id: str, endpoint_id: str) -> Path:
        return self.datadir(branch_id)

    def branch_exists(self, branch_id: str) -> bool:
        return (self.datadir(branch_id) / "mysql").is_dir()

    # --- timelines: which history a datadir holds, and replacing one -------------------

    def timeline_of(self, branch_id: str) -> str | None:
        return self.timeline_marker(self.datadir(branch_id))

    @staticmethod
    def timeline_marker(datadir: Path) -> str | None:
        """The timeline a datadir holds (None: none, or no datadir)."""
        try:
            return (datadir / TIMELINE_MARKER).read_text().strip() or None
        except OSError:
            return None

    @staticmethod
    def mark_timeline(datadir: Path, timeline_id: str) -> None:
        tmp = datadir / f".{TIMELINE_MARKER}.tmp"
        tmp.write_text(timeline_id)
        tmp.replace(datadir / TIMELINE_MARKER)

    def staging_dir(self, branch_id: str) -> Path:
        return self.root / f"{branch_id}.restore-{secrets.token_hex(4)}"

    async def swap_in(
        self, branch_id: str, staging: Path, *, old_to: str | None = None, like: str | None = None
    ) -> None:
        """Make ``staging`` the branch's datadir. The datadir it replaces becomes branch
        ``old_to``'s (its data kept under another branch), or is removed."""
        trash = await asyncio.to_thread(self._swap, branch_id, staging, old_to)
        if trash is not None:
            await asyncio.to_thread(shutil.rmtree, trash, True)

    def _swap(self, branch_id: str, staging: Path, old_to: str | None) -> Path | None:
        target = self.datadir(branch_id)
        trash = None
        if target.exists():
            if old_to is not None and not self.datadir(old_to).exists():
                target.rename(self.datadir(old_to))
            else:
                trash = target.with_name(f"{branch_id}.old-{secrets.token_hex(4)}")
                target.rename(trash)
        staging.rename(target)
        fsync_dir(self.root)
        return trash

    async def remove_leftovers(self) -> None:
        """Remove what a crash left beside the datadirs (half-made copies and restores)."""
        for path in list(self.root.iterdir()):
            if any(marker in path.name for marker in _LEFTOVERS):
                log.info("removing %s left by an interrupted copy or restore", path.name)
                await asyncio.to_thread(shutil.rmtree, path, True)

    async def ensure_template(self) -> Path:
        """Make the template datadir once (about half a second), reuse it forever."""
        async with self._template_lock:
            if (self.template / "mysql").is_dir():
                return self.template
            from selkie.compute.mariadb import REDO_LOG_SIZE

            staging = self.template.with_name(self.template.name + ".tmp")
            tmpdir = self.template.with_name("template-tmp")
            cnf = staging.with_name("template.cnf")
            # The same redo log size computes use, so the first start does not resize it; a
            # private tmpdir, because bootstrap servers sharing /tmp collide on the names of
            # their temporary tables.
            argv = [
                self.install_db,
                f"--defaults-file={cnf}",
                f"--datadir={staging}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ]
            if os.geteuid() == 0:
                argv.append("--user=root")
            for attempt in range(2):
                await asyncio.to_thread(shutil.rmtree, staging, True)
                tmpdir.mkdir(parents=True, exist_ok=True)
                cnf.write_text(
                    f"[mariadbd]\ninnodb_log_file_size={REDO_LOG_SIZE}\ntmpdir={tmpdir}\n"
                )
                try:
                    await run_tool(*argv)
                    break
                except StorageError:
                    if attempt:
                        raise
                    log.warning("mariadb-install-db failed; trying once more")
            staging.replace(self.template)
            log.info("made the template datadir at %s", self.template)
            return self.template

    async def create_branch(
        self, branch_id: str, *, parent: ParentState | None, settings: ProjectSettings
    ) -> None:
        lock = self._branch_locks.setdefault(branch_id, asyncio.Lock())
        async with lock:
            if self.branch_exists(branch_id):
                return
            target = self.datadir(branch_id)
            # A private staging dir: another process making the same branch cannot mix in.
            staging = target.with_name(f"{target.name}.tmp-{secrets.token_hex(4)}")
            try:
                if parent is None:
                    source = await self.ensure_template()
                    await asyncio.to_thread(copy_tree, source, staging)
                elif parent.running_socket is not None:
                    await self._copy_running(parent, staging)
                else:
                    source = self.datadir(parent.branch_id)
                    if not (source / "mysql").is_dir():
                        raise StorageError(f"parent branch {parent.branch_id} has no data")
                    await asyncio.to_thread(copy_tree, source, staging)
                try:
                    staging.rename(target)
                except OSError:
                    if not self.branch_exists(branch_id):
                        raise
                    # Someone else finished first; theirs is as good as ours.
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)

    async def _copy_running(self, parent: ParentState, staging: Path) -> None:
        """A consistent copy of a running parent. Where the filesystem clones, the server
        is held still while its files are cloned (milliseconds; the child's first start
        recovers it like a server after a power cut); elsewhere a hot backup, which takes
        long but never stops the parent."""
        source = self.datadir(parent.branch_id)
        if parent.paused is not None and await asyncio.to_thread(can_clone, self.root):
            async with parent.paused():
                await asyncio.to_thread(copy_tree, source, staging, clone=True)
            return
        assert parent.running_socket is not None
        await self.hot_copy(parent.running_socket, staging)

    async def hot_copy(self, socket: Path, staging: Path) -> int:
        """A consistent copy of a running server: mariadb-backup, then --prepare. Returns
        the GTID sequence number (domain 0) the copy holds, 0 when unknown."""
        user = os.environ.get("USER") or ("root" if os.geteuid() == 0 else "")
        argv = [self.backup, "--backup", f"--target-dir={staging}", f"--socket={socket}"]
        if user:
            argv.append(f"--user={user}")
        await run_tool(*argv)
        await run_tool(self.backup, "--prepare", f"--target-dir={staging}")
        return await asyncio.to_thread(backup_position, staging)

    async def hot_copy_of(self, endpoint_id: str, info: ComputeInfo, staging: Path) -> int:
        if info.socket is None:
            raise StorageError(f"compute {endpoint_id} has no local socket to copy through")
        return await self.hot_copy(info.socket, staging)

    async def prepare_compute(
        self, branch_id: str, endpoint_id: str, settings: ProjectSettings
    ) -> dict[str, str]:
        if not self.branch_exists(branch_id):
            raise StorageError(f"branch {branch_id} has no data yet")
        return {}

    async def delete_branch(self, branch_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.datadir(branch_id), True)
        self._branch_locks.pop(branch_id, None)

    async def branch_size(self, branch_id: str) -> int | None:
        return await asyncio.to_thread(_dir_size, self.datadir(branch_id))

    async def billed_size(self, branch_id: str, *, has_parent: bool) -> int | None:
        if not has_parent or not await asyncio.to_thread(can_clone, self.root):
            return await self.branch_size(branch_id)
        return await asyncio.to_thread(_dir_size, self.datadir(branch_id), unshared=True)
