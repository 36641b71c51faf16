"""Base images of branches' data in the archive: one after each clean stop (in the
background, abandoned when the branch starts again first: a wake never waits for it), and
hot ones of long-running computes (mariadb-backup, which blocks commits only for a moment)
when enough time or log has passed since the last."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from selkie.archive import Archive
from selkie.archive.layout import TimelineRef
from selkie.compute.base import ComputeDriver
from selkie.config import Settings
from selkie.control.places import Places
from selkie.control.timelines import Timelines
from selkie.errors import SelkieError
from selkie.safekeeper.api import SafekeeperApi
from selkie.storage.deltas import store_image
from selkie.storage.images import HOT, SUSPEND, ChunkIndex, ImageCache, inherited, list_images
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

# After a failed hot base image, the next try waits this long (seconds).
HOT_IMAGE_RETRY = 60.0
# A suspend's base image begins this long after the stop (seconds): a branch made of the
# parent right after its suspend clones files the image is not reading meanwhile (the
# clone waits on each file's readers), and a wake that comes soon finds none to cancel.
SUSPEND_IMAGE_DELAY = 2.0


@dataclass
class HistoryMetrics:
    base_images: int = 0
    base_image_bytes: int = 0
    restores: int = 0
    restore_seconds: list[float] = field(default_factory=list)
    pruned_objects: int = 0

    def note_restore(self, seconds: float) -> None:
        self.restores += 1
        self.restore_seconds.append(seconds)
        del self.restore_seconds[:-1000]


class Images:
    def __init__(
        self,
        *,
        settings: Settings,
        archive: Archive,
        chunks: ChunkIndex,
        safekeeper: SafekeeperApi,
        timelines: Timelines,
        places: Places,
        driver: ComputeDriver,
        metrics: HistoryMetrics,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.chunks = chunks
        self.safekeeper = safekeeper
        self.timelines = timelines
        self.places = places
        self.driver = driver
        self.metrics = metrics
        self._images: dict[str, asyncio.Task[None]] = {}
        self._hurry = asyncio.Event()
        self._caches: dict[str, ImageCache] = {}
        # The (timeline, seq) of the last image made per branch: a suspend with nothing new
        # since makes none.
        self._last_image: dict[str, tuple[str, int]] = {}
        # Timelines known to have a base image in the archive.
        self._imaged: set[str] = set()
        # Per branch: when its last image was made (monotonic) and the log bytes then.
        self._image_mark: dict[str, tuple[float, int]] = {}
        self._image_retry_at: dict[str, float] = {}

    async def stop(self, *, timeout: float) -> None:
        """Let base images in progress finish (for ``timeout``), then cancel the rest."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(), timeout)
        for task in list(self._images.values()):
            await cancel(task)

    async def before_start(self, branch_id: str) -> None:
        """A compute of the branch is about to start: a base image being made of its
        stopped datadir is abandoned (the next suspend makes one)."""
        await cancel(self._images.pop(branch_id, None))

    async def after_stop(self, branch_id: str) -> None:
        """The branch's compute stopped cleanly (the safekeeper no longer follows it): what
        its binary log holds beyond the stream is drained into the safekeeper before this
        returns; a base image follows in the background."""
        row = await asyncio.to_thread(self.timelines.current, branch_id)
        if row is None:
            return
        ref = TimelineRef(row.project_id, row.id)
        if self.places.local is None:
            # No datadir here to drain or image: what the stream did not deliver before
            # the stop stays in the compute's binary log on its claim, streamed at its
            # next start.
            for st in await self.safekeeper.timelines():
                if st.timeline_id == row.id:
                    await asyncio.to_thread(self.timelines.note_position, row.id, st.last_seq)
            return
        datadir = self.places.local.datadir(branch_id)
        last = await self.safekeeper.drain(ref, datadir)
        await asyncio.to_thread(self.timelines.note_position, row.id, last)
        if self._last_image.get(branch_id) == (row.id, last):
            return
        await cancel(self._images.pop(branch_id, None))
        self._images[branch_id] = spawn(
            self._image(branch_id, ref, last, SUSPEND, delay=SUSPEND_IMAGE_DELAY),
            name=f"image-{branch_id}",
        )

    async def _image(
        self, branch_id: str, ref: TimelineRef, seq: int, kind: str, *, delay: float = 0.0
    ) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                # wait() (a shutdown, a test) does not wait out the delay.
                await asyncio.wait_for(self._hurry.wait(), delay)
            await self.make(branch_id, ref, seq, kind=kind)
        except asyncio.CancelledError:
            log.info(
                "base image of %s abandoned (the branch started again, or Selkie stops)", branch_id
            )
            raise
        except SelkieError as exc:
            log.warning(
                "base image of %s failed (the next suspend tries again): %s", branch_id, exc
            )
        finally:
            if self._images.get(branch_id) is asyncio.current_task():
                del self._images[branch_id]

    async def make(
        self, branch_id: str, ref: TimelineRef, seq: int, *, kind: str, datadir: Path | None = None
    ) -> None:
        """A base image of the branch's datadir, or of a staged copy (``datadir``)."""
        # The branch's own datadir: a delta of its previous image when that is small. A
        # staged copy (a new timeline, a hot copy): a full image.
        cache = self._caches.setdefault(branch_id, ImageCache()) if datadir is None else None
        manifest = await store_image(
            self.archive,
            self.chunks,
            ref,
            datadir or self.places.datadirs.datadir(branch_id),
            seq=seq,
            kind=kind,
            taken_us=time.time_ns() // 1000,
            cache=cache,
        )
        self._last_image[branch_id] = (ref.timeline_id, seq)
        self._imaged.add(ref.timeline_id)
        self._image_mark[branch_id] = (time.monotonic(), await self._appended(ref))
        self.metrics.base_images += 1
        self.metrics.base_image_bytes += manifest.size
        log.info(
            "base image of %s at %d (%s, %s, %d bytes)",
            branch_id,
            seq,
            kind,
            "delta" if manifest.parent else "full",
            manifest.size,
        )

    async def wait(self) -> None:
        """Until the base images being made are done (tests, benchmarks, shutdown); those
        waiting to begin begin now."""
        self._hurry.set()
        try:
            for task in list(self._images.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.shield(task)
        finally:
            self._hurry.clear()

    async def inherit(self, branch_id: str, parent_id: str | None) -> None:
        """A branch's data was just copied from its parent's: its first image reads only
        what changed since the parent's last."""
        parent_cache = self._caches.get(parent_id or "")
        if parent_cache is not None:
            self._caches[branch_id] = await asyncio.to_thread(
                inherited, parent_cache, self.places.datadirs.datadir(branch_id)
            )

    def forget_datadir(self, branch_id: str, timeline_id: str, seq: int) -> None:
        """The branch's datadir was replaced: what was known of the old one is void."""
        self._caches.pop(branch_id, None)
        self._last_image[branch_id] = (timeline_id, seq)

    # --- hot images (the scheduler's leader) -----------------------------------------------

    async def hot_images(self, following: Mapping[str, str]) -> None:
        """A base image of each followed compute (``following``: endpoint → branch) that ran
        base_image_interval seconds or wrote base_image_log_bytes of log since its branch's
        last one."""
        for endpoint_id, branch_id in list(following.items()):
            row = await asyncio.to_thread(self.timelines.current, branch_id)
            if row is None:
                continue
            ref = TimelineRef(row.project_id, row.id)
            appended = await self._appended(ref)
            at, logged = self._image_mark.setdefault(branch_id, (time.monotonic(), appended))
            due = (
                time.monotonic() - at >= self.settings.base_image_interval
                or appended - logged >= self.settings.base_image_log_bytes
                or not await self._has_image(ref)
            )
            if due and time.monotonic() >= self._image_retry_at.get(branch_id, 0.0):
                try:
                    await self.hot_image(
                        endpoint_id, branch_id, TimelineRef(row.project_id, row.id)
                    )
                except SelkieError as exc:
                    # A compute stopping meanwhile, say: try again in a while.
                    self._image_retry_at[branch_id] = time.monotonic() + HOT_IMAGE_RETRY
                    log.warning("hot base image of %s failed: %s", branch_id, exc.message)

    async def _has_image(self, ref: TimelineRef) -> bool:
        """Whether the timeline has a base image (a timeline begun on a Kubernetes claim
        has none until its first hot copy: until then it cannot be restored)."""
        if ref.timeline_id in self._imaged or self.places.local is not None:
            return True
        if await list_images(self.archive, ref):
            self._imaged.add(ref.timeline_id)
            return True
        return False

    async def _appended(self, ref: TimelineRef) -> int:
        """Log bytes the safekeeper appended to the timeline since it opened it (0 when it
        cannot say: a remote safekeeper not answering)."""
        try:
            return await self.safekeeper.appended_bytes(ref)
        except SelkieError as exc:
            log.warning("timeline %s: %s", ref.timeline_id, exc.message)
            return 0

    async def hot_image(self, endpoint_id: str, branch_id: str, ref: TimelineRef) -> int:
        """A base image of a running compute; returns its position."""
        info = await self.driver.inspect(endpoint_id)
        if not info.running:
            return -1
        async with self.places.staging(branch_id) as staging:
            seq = await self.places.restorable.hot_copy_of(endpoint_id, info, staging)
            await self.make(branch_id, ref, seq, kind=HOT, datadir=staging)
        return seq
