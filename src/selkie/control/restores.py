"""Point-in-time branches and restores, Neon's API shape.

- A branch made with ``parent_timestamp`` or ``parent_lsn`` holds its parent as it was
  then: the parent's history is restored into the new branch's datadir, which starts a
  timeline of its own.
- ``POST …/branches/{id}/restore`` replaces a branch's data with a source branch's (itself
  included) as of a time or position. The new data is staged and given a first base image
  while the branch keeps running; then its endpoints are stopped, held (a client that
  connects meanwhile waits, as for any wake), the datadir is swapped, and the endpoints
  that ran start again. With ``preserve_under_name`` the old data and its history become a
  new branch of that name.

Targets are checked before anything is queued: a time outside the source's history window
(``history_retention_seconds`` back from now, and not before the branch existed) or in the
future is a 422 naming the window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from selkie import model
from selkie.archive.layout import TimelineRef
from selkie.control.base import ServiceBase
from selkie.control.history import History
from selkie.control.lifecycle import Lifecycle
from selkie.control.points import Point, check_point, switch_timeline
from selkie.control.rules import copy_accounts
from selkie.errors import Conflict, NotFound
from selkie.model import OperationAction, Principal, utcnow
from selkie.store import Store, convert
from selkie.store.tables import (
    BranchRow,
    OperationRow,
)
from selkie.tasks import spawn

log = logging.getLogger(__name__)


class RestoreService(ServiceBase):
    """The API side: validate and queue (no compute or archive is touched here)."""

    def restore(
        self,
        who: Principal,
        project_id: str,
        branch_id: str,
        *,
        source_branch_id: str,
        source_timestamp: datetime | None = None,
        source_lsn: str | None = None,
        preserve_under_name: str | None = None,
    ) -> tuple[model.Branch, list[model.Operation]]:
        from selkie.control.branches import BranchService

        with self.store.write() as s:
            project = self.project_row(s, who, project_id)
            branch = self.branch_row(s, who, project_id, branch_id)
            if branch.protected:
                raise Conflict(f"branch {branch_id} is protected; unprotect it to restore over it")
            source = self.branch_row(s, who, project_id, source_branch_id)
            point = check_point(
                s,
                settings_archive=self.settings.archive_enabled,
                project=project,
                branch=source,
                at=source_timestamp,
                lsn=source_lsn,
                names=("source_timestamp", "source_lsn"),
                now=utcnow(),
            )
            if preserve_under_name is not None:
                if self.settings.compute_driver == "kubernetes":
                    # A claim cannot be renamed into another branch's.
                    raise Conflict(
                        "preserve_under_name is not supported for branches on Kubernetes "
                        "computes: make a branch of the current data first, then restore"
                    )
                model.validate_name("branch", preserve_under_name)
                BranchService._check_name_free(s, project_id, preserve_under_name)
            op = self.enqueue(
                s,
                project_id=project_id,
                branch_id=branch_id,
                action=OperationAction.RESTORE_BRANCH,
                payload={
                    "source_branch_id": source.id,
                    "point": point.payload(),
                    "preserve_under_name": preserve_under_name,
                },
            )
            return convert.branch(branch), [op]


class Restorer:
    """The operations side: restores run by the operations runner. Branch data is the
    history service's to stage, image and swap in; this class sequences a restore and
    records it in the store."""

    def __init__(self, *, store: Store, history: History, lifecycle: Lifecycle) -> None:
        self.store = store
        self.history = history
        self.lifecycle = lifecycle

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    # --- restore of a branch ---------------------------------------------------------------

    def _progress(self, op_id: str) -> Callable[[str], None]:
        def note(step: str) -> None:
            with self.store.write() as s:
                row = s.get(OperationRow, op_id)
                if row is not None:
                    row.payload = {**(row.payload or {}), "progress": step}

        def progress(step: str) -> None:
            spawn(asyncio.to_thread(note, step), name=f"progress-{op_id}")

        return progress

    async def restore_branch(self, op: model.Operation) -> None:
        assert op.branch_id is not None
        branch_id = op.branch_id
        payload = op.payload
        point = Point.from_payload(payload.get("point") or {})
        source = await self.history.timeline_at(payload["source_branch_id"], point)
        timeline_id = model.new_id("tl")
        started = time.monotonic()
        progress = self._progress(op.id)
        async with self.history.staging(branch_id) as staging:
            restored = await self.history.restore_into(source, point, staging, progress)
            progress("storing a base image of the restored data")
            await self.history.image_staged(
                branch_id, TimelineRef(op.project_id, timeline_id), restored.seq, staging
            )
            progress("swapping the data in")
            endpoint_ids = await self._db(self._endpoints_of, branch_id)
            async with self.lifecycle.paused(endpoint_ids) as was_running:
                await self.history.swap_in(
                    branch_id,
                    staging,
                    switch=lambda: self._db(
                        self._switch,
                        branch_id,
                        timeline_id,
                        source.id,
                        restored.seq,
                        payload.get("preserve_under_name"),
                    ),
                    like=payload["source_branch_id"],
                )
            self.history.forget_datadir(branch_id, timeline_id, restored.seq)
        self.history.note_restore(time.monotonic() - started)
        for endpoint_id in was_running:
            await self.lifecycle.start(endpoint_id)
        progress(f"restored at 0-1-{restored.seq}")

    def _endpoints_of(self, branch_id: str) -> list[str]:
        from selkie.store.tables import EndpointRow

        with self.store.read() as s:
            return list(
                s.execute(
                    select(EndpointRow.id)
                    .where(EndpointRow.branch_id == branch_id)
                    .where(EndpointRow.current_state != model.EndpointState.DELETED.value)
                ).scalars()
            )

    def _switch(
        self,
        branch_id: str,
        timeline_id: str,
        source_id: str,
        seq: int,
        preserve_under_name: str | None,
    ) -> str | None:
        """In one transaction: the branch moves to its new timeline; with a name, the old
        timeline becomes a new branch's (with the branch's roles and databases). Returns
        that branch's id."""
        from selkie.control.branches import BranchService

        now = utcnow()
        with self.store.write() as s:
            branch = s.get(BranchRow, branch_id)
            if branch is None or branch.deleted_at is not None:
                raise NotFound(f"branch {branch_id} was deleted")
            old = branch.timeline_id
            preserved_id = None
            if preserve_under_name is not None and old is not None:
                BranchService._check_name_free(s, branch.project_id, preserve_under_name)
                preserved_id = model.new_id("br")
                s.add(
                    BranchRow(
                        id=preserved_id,
                        project_id=branch.project_id,
                        parent_id=branch.parent_id,
                        name=preserve_under_name,
                        is_default=False,
                        current_state=model.BranchState.READY.value,
                        timeline_id=old,
                        parent_timestamp=branch.parent_timestamp,
                        parent_lsn=branch.parent_lsn,
                    )
                )
                s.flush()
                copy_accounts(s, branch_id, preserved_id)
            switch_timeline(
                s,
                branch,
                timeline_id=timeline_id,
                start_seq=seq,
                parent=(source_id, seq),
                now=now,
                end_previous=preserved_id is None,
            )
            return preserved_id
