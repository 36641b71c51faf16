"""The StorageDriver boundary: where a branch's data lives and how a compute reaches it.

``local``: one datadir per branch on this machine. ``pageserver``: the remote storage our
users run (a patched MariaDB that reads pages from a page server and writes its log to a
safekeeper); the compute keeps no local state. The control plane picks the driver from the
project's ``storage_mode`` and never looks inside a datadir itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from selkie.compute.base import ComputeInfo
from selkie.model import ProjectSettings, StorageMode


@dataclass(frozen=True, kw_only=True)
class ParentState:
    """The branch a new branch copies, and whether its compute is running (then the copy
    must be a hot backup, or clones taken while ``paused`` holds the server still)."""

    branch_id: str
    running_socket: Path | None = None
    # Holds the parent's server still (every thread stopped, no I/O submitted) for the
    # block: the files then are a crash-consistent image, as after a power cut.
    paused: Callable[[], AbstractAsyncContextManager[None]] | None = None


class StorageDriver(ABC):
    @abstractmethod
    async def create_branch(
        self, branch_id: str, *, parent: ParentState | None, settings: ProjectSettings
    ) -> None:
        """Make the branch's data: a fresh database when ``parent`` is None, else a
        consistent copy of the parent. Idempotent: an existing branch is left as it is."""

    @abstractmethod
    def compute_datadir(self, branch_id: str, endpoint_id: str) -> Path:
        """The datadir a compute of this branch is started with."""

    @abstractmethod
    async def prepare_compute(
        self, branch_id: str, endpoint_id: str, settings: ProjectSettings
    ) -> dict[str, str]:
        """Check the storage is reachable and return extra server options for the compute.
        Raises StorageError with a clear message when it is not."""

    @abstractmethod
    async def delete_branch(self, branch_id: str) -> None:
        """Remove the branch's data. Idempotent."""

    @abstractmethod
    async def branch_size(self, branch_id: str) -> int | None:
        """Bytes the branch occupies (for storage metering); None when this driver cannot
        tell (the data lives in a page server that meters it)."""

    async def billed_size(self, branch_id: str, *, has_parent: bool) -> int | None:
        """Bytes the branch is billed for: what it occupies, less what it still shares
        with other branches when it is a branch of one (its parent pays for those)."""
        return await self.branch_size(branch_id)

    @abstractmethod
    def branch_exists(self, branch_id: str) -> bool:
        """Whether the branch's data has been made."""


@runtime_checkable
class Restorable(Protocol):
    """Storage whose branches' data the history can rebuild: a datadir is staged on this
    machine (a restore, a rebuild, a branch at a past point, a hot copy for a base image)
    and swapped in as the branch's data. Local datadirs are renamed into place;
    Kubernetes claims are filled through a pod."""

    def staging_dir(self, branch_id: str) -> Path:
        """A new directory on this machine to stage the branch's data in."""

    async def swap_in(
        self, branch_id: str, staging: Path, *, old_to: str | None = None, like: str | None = None
    ) -> None:
        """Make ``staging`` the branch's data. The data it replaces becomes branch
        ``old_to``'s, or is removed. ``like``: the branch whose admin credentials the
        staged data carries (its source), when not the branch's own."""

    async def hot_copy_of(self, endpoint_id: str, info: ComputeInfo, staging: Path) -> int:
        """A consistent copy of the running compute's data in ``staging``; its GTID
        sequence number (domain 0)."""


@dataclass(frozen=True)
class Storages:
    """The storage drivers by storage mode (a project picks one with ``storage_mode``)."""

    local: StorageDriver
    pageserver: StorageDriver | None = None

    def for_settings(self, settings: ProjectSettings) -> StorageDriver:
        if settings.storage_mode is StorageMode.PAGESERVER:
            if self.pageserver is None:
                from selkie.errors import StorageError

                raise StorageError("pageserver storage is not available here")
            return self.pageserver
        return self.local
