"""Retention: history older than each project's ``history_retention_seconds`` is deleted
from the archive, keeping what a restore to the window's start needs (the newest base image
at or before it, and the log after that image). Timelines a restore replaced, and deleted
projects, go once their window has passed; chunks no remaining base image names go after a
grace period (an image being made may count on them).

The scheduler's leader runs it (every ten minutes, through the history service).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select

from selkie import model
from selkie.archive import Archive, segments
from selkie.archive.layout import TimelineRef, project_prefix
from selkie.storage.deltas import chain
from selkie.storage.images import ChunkIndex, list_images, read_manifest
from selkie.store import Store, convert
from selkie.store.tables import BranchRow, ProjectRow, TimelineRow

T = TypeVar("T")
# Chunks younger than this are never collected: an image being made may count on them.
CHUNK_GRACE = timedelta(minutes=30)


class Retention:
    def __init__(self, *, store: Store, archive: Archive, chunks: ChunkIndex) -> None:
        self.store = store
        self.archive = archive
        self.chunks = chunks

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def _projects(self) -> list[tuple[str, model.ProjectSettings, bool]]:
        with self.store.read() as s:
            return [
                (p.id, convert.project_settings(p.settings), p.deleted_at is not None)
                for p in s.execute(select(ProjectRow)).scalars()
            ]

    def _timelines_of(self, project_id: str) -> list[TimelineRow]:
        with self.store.read() as s:
            return list(
                s.execute(select(TimelineRow).where(TimelineRow.project_id == project_id))
                .scalars()
                .all()
            )

    def _live_timeline_ids(self, project_id: str) -> set[str]:
        with self.store.read() as s:
            return {
                tid
                for tid in s.execute(
                    select(BranchRow.timeline_id)
                    .where(BranchRow.project_id == project_id)
                    .where(BranchRow.deleted_at.is_(None))
                ).scalars()
                if tid is not None
            }

    async def prune(self, now: datetime) -> int:
        """Delete history older than each project's retention window (keeping the newest
        base image at or before the window's start, and the log after it), the history of
        deleted projects and branches once their window has passed, and chunks no image
        names. Returns the objects deleted."""
        deleted = 0
        for project_id, settings, gone in await self._db(self._projects):
            window_start = now - timedelta(seconds=settings.history_retention_seconds)
            if gone:
                objects = await self.archive.list(project_prefix(project_id))
                if (
                    objects
                    and max((o.last_modified for o in objects if o.last_modified), default=now)
                    < window_start
                ):
                    await self.archive.delete([o.key for o in objects])
                    self.chunks.forget(project_id)
                    deleted += len(objects)
                continue
            live = await self._db(self._live_timeline_ids, project_id)
            for row in await self._db(self._timelines_of, project_id):
                ref = TimelineRef(project_id, row.id)
                if row.id not in live and row.ended_at is not None and row.ended_at < window_start:
                    objects = await self.archive.list(ref.prefix)
                    await self.archive.delete([o.key for o in objects])
                    deleted += len(objects)
                    continue
                deleted += await self._prune_timeline(ref, window_start)
            deleted += await self._collect_chunks(project_id, now)
        return deleted

    async def _prune_timeline(self, ref: TimelineRef, window_start: datetime) -> int:
        images = await list_images(self.archive, ref)
        start_us = int(window_start.timestamp() * 1_000_000)
        older = [i for i in images if i.taken_us <= start_us]
        if not older:
            return 0
        anchor = max(older, key=lambda i: (i.seq, i.taken_us))
        # The anchor and every later image stay, with the images their deltas build on.
        needed: set[str] = set()
        for image in images:
            if image.taken_us >= anchor.taken_us and image.key not in needed:
                needed.update(m.key for m in await chain(self.archive, image.key))
        doomed = []
        for image in images:
            if image.key not in needed:
                doomed += [image.key, image.key.removesuffix(".json.zst") + ".pages.zst"]
        for obj in await self.archive.list(ref.wal_prefix):
            rng = segments.parse_object_name(obj.key.rsplit("/", 1)[1])
            if rng is not None and rng[1] <= anchor.seq:
                doomed.append(obj.key)
        await self.archive.delete(doomed)
        return len(doomed)

    async def _collect_chunks(self, project_id: str, now: datetime) -> int:
        async with self.chunks.lock(project_id):
            referenced: set[str] = set()
            for obj in await self.archive.list(project_prefix(project_id) + "timelines/"):
                if "/base/" in obj.key and obj.key.endswith(".json.zst"):
                    manifest = await read_manifest(self.archive, obj.key)
                    for f in manifest.files:
                        referenced.update(f.chunks)
            prefix = project_prefix(project_id) + "chunks/"
            doomed = [
                o.key
                for o in await self.archive.list(prefix)
                if o.key[len(prefix) :] not in referenced
                and (o.last_modified is None or o.last_modified < now - CHUNK_GRACE)
            ]
            await self.archive.delete(doomed)
            self.chunks.forget(project_id, {k[len(prefix) :] for k in doomed})
            return len(doomed)

    async def project_bytes(self) -> dict[str, int]:
        """What each project's history occupies in the archive (for metering)."""
        sizes: dict[str, int] = {}
        for obj in await self.archive.list("projects/"):
            project_id = obj.key.split("/", 2)[1]
            sizes[project_id] = sizes.get(project_id, 0) + obj.size
        return sizes
