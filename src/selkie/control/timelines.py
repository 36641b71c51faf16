"""A branch's timelines in the state store: which is current, where each began and under
which ancestor, how far each is durable. Blocking calls (the history runs them in worker
threads)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from selkie import model
from selkie.archive.layout import TimelineRef
from selkie.control.points import switch_timeline
from selkie.errors import ComputeError
from selkie.store import Store
from selkie.store.tables import BranchRow, TimelineRow


class Timelines:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    def current(self, branch_id: str) -> TimelineRow | None:
        with self.store.read() as s:
            branch = s.get(BranchRow, branch_id)
            if branch is None or branch.timeline_id is None:
                return None
            return s.get(TimelineRow, branch.timeline_id)

    def begin(
        self,
        branch_id: str,
        project_id: str,
        *,
        start_seq: int,
        parent: tuple[str, int] | None = None,
        timeline_id: str | None = None,
        parent_lsn: str | None = None,
        parent_timestamp: datetime | None = None,
    ) -> TimelineRow:
        """Record a new timeline as the branch's current one (the one it replaces ends)."""
        with self.store.write() as s:
            branch = s.get(BranchRow, branch_id)
            if branch is None:
                raise ComputeError(f"branch {branch_id} is gone")
            row = switch_timeline(
                s,
                branch,
                timeline_id=timeline_id or model.new_id("tl"),
                start_seq=start_seq,
                parent=parent,
                now=self.clock(),
            )
            if parent_lsn is not None:
                branch.parent_lsn = parent_lsn
            if parent_timestamp is not None:
                branch.parent_timestamp = parent_timestamp
            s.flush()
            return row

    def note_position(self, timeline_id: str, seq: int) -> None:
        with self.store.write() as s:
            row = s.get(TimelineRow, timeline_id)
            if row is not None and seq > row.last_seq:
                row.last_seq = seq

    def begin_followed(self, branch_id: str, seq: int) -> TimelineRow:
        """A timeline for a branch whose data lives out of reach, begun at its running
        compute's position, under its parent's current timeline there."""
        with self.store.read() as s:
            branch = s.get(BranchRow, branch_id)
            if branch is None:
                raise ComputeError(f"branch {branch_id} is gone")
            project_id, parent_id = branch.project_id, branch.parent_id
            parent = s.get(BranchRow, parent_id) if parent_id else None
            parent_tl = parent.timeline_id if parent is not None else None
        return self.begin(
            branch_id,
            project_id,
            start_seq=seq,
            parent=(parent_tl, seq) if parent_tl else None,
            parent_lsn=f"0-1-{seq}" if seq else None,
        )

    def ancestry(self, row: TimelineRow) -> list[tuple[TimelineRef, int]]:
        """The timeline's ancestors, nearest first, each with the branch point its child
        began at."""
        out: list[tuple[TimelineRef, int]] = []
        seen = {row.id}
        with self.store.read() as s:
            while row.parent_timeline_id is not None and row.parent_seq is not None:
                parent = s.get(TimelineRow, row.parent_timeline_id)
                if parent is None or parent.id in seen:
                    break
                out.append((TimelineRef(parent.project_id, parent.id), row.parent_seq))
                seen.add(parent.id)
                row = parent
        return out
