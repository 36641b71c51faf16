"""Where branch data is, for the history service: the datadirs on this machine (local
computes), or Kubernetes claims reached through the API. Base images, rebuilds, restores
and hot copies stage their data here and swap it in."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from selkie.control.points import NO_IMAGES
from selkie.errors import Conflict
from selkie.storage.base import Restorable, StorageDriver
from selkie.storage.local import LocalStorage


class Places:
    def __init__(self, storage: StorageDriver) -> None:
        self.storage = storage
        # Branch datadirs on this machine (local computes); None where computes keep their
        # data elsewhere (Kubernetes claims, which base images and restores reach through
        # the API: ``restorable``).
        self.local = storage if isinstance(storage, LocalStorage) else None
        self.claims = storage if self.local is None and isinstance(storage, Restorable) else None

    @property
    def datadirs(self) -> LocalStorage:
        """The branches' datadirs on this machine; a Conflict where computes keep their
        data elsewhere."""
        if self.local is None:
            raise Conflict(NO_IMAGES)
        return self.local

    @property
    def restorable(self) -> Restorable:
        """Where restores, rebuilds and hot copies stage data and swap it in: the
        datadirs on this machine, or Kubernetes claims (filled through a pod)."""
        place = self.local or self.claims
        if place is None:
            raise Conflict(NO_IMAGES)
        return place

    @asynccontextmanager
    async def staging(self, branch_id: str) -> AsyncIterator[Path]:
        """A staging directory for the branch's new data, removed when the block ends
        (swapped in by then, or abandoned)."""
        staging = self.restorable.staging_dir(branch_id)
        try:
            yield staging
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    @staticmethod
    async def mark_timeline(datadir: Path, timeline_id: str) -> None:
        """Name the timeline whose data ``datadir`` holds (its marker file)."""
        await asyncio.to_thread(LocalStorage.mark_timeline, datadir, timeline_id)
