"""The lifecycle's reads and writes of endpoints, one transaction each.

The endpoint state machine (:mod:`selkie.control.lifecycle`) decides; these functions are
what it asks the store. Every change of state goes through :func:`transition`, the
compare-and-set on (state, generation) of :meth:`Store.transition_endpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from selkie.errors import NotFound
from selkie.model import (
    BranchState,
    EndpointState,
    EndpointType,
    OperationAction,
    OperationStatus,
    SuspendTier,
    new_id,
)
from selkie.store.store import Store, Usage
from selkie.store.tables import (
    BranchRow,
    DatabaseRow,
    DroppedNameRow,
    EndpointRow,
    OperationRow,
    ProjectRow,
    RoleRow,
    UsageEventRow,
)

# States in which an endpoint has (or is getting) a compute.
RUNNING = (EndpointState.STARTING, EndpointState.ACTIVE)


@dataclass(frozen=True)
class StartRows:
    """One endpoint with what starting it needs to know, read in one transaction."""

    endpoint: EndpointRow
    project: ProjectRow
    branch: BranchRow
    roles: list[RoleRow]
    databases: list[DatabaseRow]
    # Roles and databases deleted through the API (the only names sync may drop).
    dropped: list[DroppedNameRow]


def stop_usage(ep: EndpointRow, at: datetime) -> Usage:
    """The usage event that ends an endpoint's billable time."""
    return Usage(kind="stop", at=at, cu=ep.autoscaling_limit_max_cu, project_id=ep.project_id)


def start_usage(ep: EndpointRow, at: datetime, cu: float) -> Usage:
    """The usage event that begins an endpoint's billable time, at the size it starts at."""
    return Usage(kind="start", at=at, cu=cu, project_id=ep.project_id)


def resize_usage(ep: EndpointRow, at: datetime, cu: float) -> Usage:
    """The usage event of a running compute changing size: billed at ``cu`` from ``at``."""
    return Usage(kind="resize", at=at, cu=cu, project_id=ep.project_id)


def load_for_start(store: Store, endpoint_id: str) -> StartRows:
    """A live endpoint, its project, branch, roles and databases. NotFound when deleted."""
    with store.read() as s:
        ep = s.get(EndpointRow, endpoint_id)
        if ep is None or ep.current_state == EndpointState.DELETED.value:
            raise NotFound(f"endpoint {endpoint_id} not found")
        project = s.get(ProjectRow, ep.project_id)
        branch = s.get(BranchRow, ep.branch_id)
        if project is None or branch is None:
            raise NotFound(f"endpoint {endpoint_id} has no project or branch")
        roles = s.execute(select(RoleRow).where(RoleRow.branch_id == branch.id)).scalars()
        dbs = s.execute(select(DatabaseRow).where(DatabaseRow.branch_id == branch.id)).scalars()
        dropped = s.execute(
            select(DroppedNameRow).where(DroppedNameRow.branch_id == branch.id)
        ).scalars()
        return StartRows(
            endpoint=ep,
            project=project,
            branch=branch,
            roles=list(roles),
            databases=list(dbs),
            dropped=list(dropped),
        )


def get(store: Store, endpoint_id: str) -> EndpointRow:
    """An endpoint in any state, deleted included."""
    with store.read() as s:
        ep = s.get(EndpointRow, endpoint_id)
        if ep is None:
            raise NotFound(f"endpoint {endpoint_id} not found")
        return ep


def transition(
    store: Store,
    endpoint_id: str,
    expected: EndpointState | tuple[EndpointState, ...],
    generation: int | None,
    new_state: EndpointState,
    usage: Usage | None = None,
    **fields: Any,
) -> int | None:
    """The compare-and-set in a transaction of its own: the new generation, or None when
    the endpoint was not (or no longer) in ``expected`` at ``generation``."""
    with store.write() as s:
        return Store.transition_endpoint(
            s,
            endpoint_id,
            expected_state=expected,
            expected_generation=generation,
            new_state=new_state,
            usage=usage,
            **fields,
        )


def fail_if_running(store: Store, endpoint_id: str, reason: str, at: datetime) -> bool:
    """Mark an endpoint failed if it is starting or active (its compute died); its billable
    time ends at ``at`` if it was active. False when it was in no such state."""
    with store.write() as s:
        ep = s.get(EndpointRow, endpoint_id)
        if ep is None or ep.current_state not in [x.value for x in RUNNING]:
            return False
        was_active = ep.current_state == EndpointState.ACTIVE.value
        generation = Store.transition_endpoint(
            s,
            endpoint_id,
            expected_state=EndpointState(ep.current_state),
            expected_generation=ep.generation,
            new_state=EndpointState.FAILED,
            usage=stop_usage(ep, at) if was_active else None,
            failure_reason=reason[:4000],
            compute_address=None,
            pending_state=None,
        )
        return generation is not None


def count_running(store: Store, project_id: str, *, besides: str) -> int:
    """How many of a project's endpoints other than ``besides`` are starting or active."""
    with store.read() as s:
        return s.execute(
            select(func.count(EndpointRow.id))
            .where(EndpointRow.project_id == project_id)
            .where(EndpointRow.id != besides)
            .where(EndpointRow.current_state.in_([x.value for x in RUNNING]))
        ).scalar_one()


def warm_ids(store: Store, branch_id: str | None = None) -> list[str]:
    """The endpoints suspended warm (their computes frozen), on one branch when given."""
    stmt = (
        select(EndpointRow.id)
        .where(EndpointRow.current_state == EndpointState.SUSPENDED.value)
        .where(EndpointRow.suspend_tier == SuspendTier.WARM.value)
    )
    if branch_id is not None:
        stmt = stmt.where(EndpointRow.branch_id == branch_id)
    with store.read() as s:
        return list(s.execute(stmt).scalars())


def running_ids(store: Store, *, branch_id: str | None = None) -> list[str]:
    """The endpoints starting or active (on one branch, when given)."""
    stmt = select(EndpointRow.id).where(EndpointRow.current_state.in_([x.value for x in RUNNING]))
    if branch_id is not None:
        stmt = stmt.where(EndpointRow.branch_id == branch_id)
    with store.read() as s:
        return list(s.execute(stmt).scalars())


def active_read_only_ids(store: Store) -> list[str]:
    """The read-only endpoints whose compute is active."""
    stmt = (
        select(EndpointRow.id)
        .where(EndpointRow.type == EndpointType.READ_ONLY.value)
        .where(EndpointRow.current_state == EndpointState.ACTIVE.value)
    )
    with store.read() as s:
        return list(s.execute(stmt).scalars())


def mark_branch_ready(store: Store, branch_id: str, size: int | None = None) -> None:
    """The branch's data exists (``size`` bytes of it, when measured)."""
    with store.write() as s:
        row = s.get(BranchRow, branch_id)
        if row is not None:
            row.current_state = BranchState.READY.value
            if size is not None:
                row.logical_size = size


@dataclass(frozen=True)
class Sized:
    """An active endpoint as the autoscaler sees it."""

    id: str
    project_id: str
    generation: int
    min_cu: float
    max_cu: float
    current_cu: float


def active_sizes(store: Store) -> list[Sized]:
    """Active endpoints with a compute whose size is known."""
    with store.read() as s:
        rows = s.execute(
            select(EndpointRow)
            .where(EndpointRow.current_state == EndpointState.ACTIVE.value)
            .where(EndpointRow.current_cu.is_not(None))
        ).scalars()
        return [
            Sized(
                id=r.id,
                project_id=r.project_id,
                generation=r.generation,
                min_cu=r.autoscaling_limit_min_cu,
                max_cu=r.autoscaling_limit_max_cu,
                current_cu=float(r.current_cu or 0.0),
            )
            for r in rows
        ]


def record_resize(store: Store, ep: Sized, cu: float, at: datetime, why: str) -> bool:
    """A compute now runs at ``cu``: its endpoint says so, it is billed so from ``at``, and
    an ``autoscale`` operation tells when and why. False (nothing written) when the
    endpoint is no longer active at the generation the autoscaler read."""
    with store.write() as s:
        result = s.execute(
            update(EndpointRow)
            .where(EndpointRow.id == ep.id)
            .where(EndpointRow.current_state == EndpointState.ACTIVE.value)
            .where(EndpointRow.generation == ep.generation)
            .values(current_cu=cu)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        # The same generation as the start it follows: intervals order by (generation, at).
        s.add(
            UsageEventRow(
                endpoint_id=ep.id,
                project_id=ep.project_id,
                kind="resize",
                at=at,
                cu=cu,
                generation=ep.generation,
            )
        )
        s.add(_autoscale_operation(ep, cu, why, error=None))
        return True


def record_resize_failure(store: Store, ep: Sized, cu: float, why: str, error: str) -> None:
    """A resize that did not happen: a failed ``autoscale`` operation with the reason (the
    compute runs on at its old size; the autoscaler tries again)."""
    with store.write() as s:
        s.add(_autoscale_operation(ep, cu, why, error=error))


def _autoscale_operation(ep: Sized, cu: float, why: str, *, error: str | None) -> OperationRow:
    return OperationRow(
        id=new_id("op"),
        project_id=ep.project_id,
        endpoint_id=ep.id,
        action=OperationAction.AUTOSCALE.value,
        status=(OperationStatus.FAILED if error else OperationStatus.FINISHED).value,
        error=error,
        failures_count=1 if error else 0,
        total_duration_ms=0,
        payload={"from_cu": ep.current_cu, "to_cu": cu, "reason": why},
    )


def endpoint_ids_of_branch(store: Store, branch_id: str) -> list[str]:
    """The branch's live endpoints, oldest first."""
    with store.read() as s:
        return list(
            s.execute(
                select(EndpointRow.id)
                .where(EndpointRow.branch_id == branch_id)
                .where(EndpointRow.current_state != EndpointState.DELETED.value)
                .order_by(EndpointRow.created_at)
            ).scalars()
        )
