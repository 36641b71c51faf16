"""Retention: history older than each project's ``history_retention_seconds`` is deleted
from the archive, keeping what a restore to the window's start needs (the newest base image
at or before it, and the log after that image). Timelines a restore replaced, those of
deleted branches, and deleted projects go once their window has passed; chunks no
remaining base image names go after a grace period (an image being made may count on them).

A timeline with ancestors (a branch of its parent's tip, with no base image of its own
yet) reads its parent's history up to the branch point: what a kept timeline needs that
way is kept too, on every ancestor up to one with an image at or before the point, however
old — Neon's "branch points" in its garbage collection. Shared history is stored, and so
billed, once.

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
from selkie.storage.images import INITIAL, ChunkIndex, ImageRef, list_images, read_manifest
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

    def _ended(self, project_id: str) -> dict[str, datetime | None]:
        """When each timeline of the project stopped taking history: a restore replaced it,
        or its branch was deleted; None while it goes on."""
        with self.store.read() as s:
            branches = {
                b.id: b
                for b in s.execute(
                    select(BranchRow).where(BranchRow.project_id == project_id)
                ).scalars()
            }
            out: dict[str, datetime | None] = {}
            for row in s.execute(
                select(TimelineRow).where(TimelineRow.project_id == project_id)
            ).scalars():
                carried = [b for b in branches.values() if b.timeline_id == row.id]
                if any(b.deleted_at is None for b in carried):
                    out[row.id] = None  # a live branch's (a preserved one's, too)
                elif row.ended_at is not None:
                    out[row.id] = row.ended_at
                else:
                    deleted = [b.deleted_at for b in carried if b.deleted_at is not None]
                    out[row.id] = max(deleted) if deleted else None
            return out

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
            rows = {r.id: r for r in await self._db(self._timelines_of, project_id)}
            ended = await self._db(self._ended, project_id)
            images = {
                tid: await list_images(self.archive, TimelineRef(project_id, tid)) for tid in rows
            }
            own = {
                tid
                for tid in rows
                if ended.get(tid) is None or ended[tid] >= window_start  # type: ignore[operator]
            }
            points = _branch_points(rows, images, own, window_start)
            for tid, row in rows.items():
                ref = TimelineRef(project_id, row.id)
                if tid not in own and tid not in points:
                    objects = await self.archive.list(ref.prefix)
                    await self.archive.delete([o.key for o in objects])
                    deleted += len(objects)
                    continue
                deleted += await self._prune_timeline(
                    ref,
                    images[tid],
                    window_start if tid in own else None,
                    points.get(tid, set()),
                )
            deleted += await self._collect_chunks(project_id, now)
        return deleted

    async def _prune_timeline(
        self,
        ref: TimelineRef,
        images: list[ImageRef],
        window_start: datetime | None,
        points: set[int],
    ) -> int:
        """Delete what neither the timeline's own window (``window_start``; None: its
        window has passed) nor its descendants' branch points need."""
        kept_images: set[str] = set()
        # Log kept: transactions in (low, high] (high None: to the end).
        kept_logs: list[tuple[int, int | None]] = []
        if window_start is not None:
            start_us = int(window_start.timestamp() * 1_000_000)
            older = [i for i in images if i.taken_us <= start_us]
            if not older:
                return 0  # the window reaches back to the timeline's start
            anchor = max(older, key=lambda i: (i.seq, i.taken_us))
            # The anchor and every later image stay, with the images their deltas build on.
            for image in images:
                if image.taken_us >= anchor.taken_us and image.key not in kept_images:
                    kept_images.update(m.key for m in await chain(self.archive, image.key))
            kept_logs.append((anchor.seq, None))
        for point in points:
            base = max((i for i in images if i.seq <= point), key=lambda i: i.seq, default=None)
            if base is None:
                return 0  # a descendant needs it from its start (and its ancestors with it)
            kept_images.update(m.key for m in await chain(self.archive, base.key))
            kept_logs.append((base.seq, point))
        doomed = []
        for image in images:
            if image.key not in kept_images:
                doomed += [image.key, image.key.removesuffix(".json.zst") + ".pages.zst"]
        for obj in await self.archive.list(ref.wal_prefix):
            rng = segments.parse_object_name(obj.key.rsplit("/", 1)[1])
            if rng is not None and not any(
                rng[1] > low and (high is None or rng[0] <= high) for low, high in kept_logs
            ):
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


def _branch_points(
    rows: dict[str, TimelineRow],
    images: dict[str, list[ImageRef]],
    own: set[str],
    window_start: datetime,
) -> dict[str, set[int]]:
    """Per timeline, the branch points its descendants still read it at: a kept timeline
    whose own images do not reach back over its window needs its parent up to where it
    began, and that parent its own parent where it has no image at or before that point."""
    start_us = int(window_start.timestamp() * 1_000_000)
    points: dict[str, set[int]] = {}
    for tid in own:
        mine = images[tid]
        if mine and (mine[0].kind == INITIAL or any(i.taken_us <= start_us for i in mine)):
            continue
        row, seen = rows[tid], {tid}
        while row.parent_timeline_id in rows and row.parent_seq is not None:
            parent = rows[row.parent_timeline_id]
            if parent.id in seen:
                break
            seen.add(parent.id)
            points.setdefault(parent.id, set()).add(row.parent_seq)
            if any(i.seq <= row.parent_seq for i in images[parent.id]):
                break
            row = parent
    return points
