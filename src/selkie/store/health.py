"""What the health checks observed, written for every API replica to read.

The leader checks every active compute every couple of seconds (control/health.py) and
writes one pass's observations in one transaction. An observation is of one generation of
its endpoint: once the endpoint moves on (suspended, restarted, failed) it no longer
describes it, and :func:`endpoint_health` says ``unknown`` until the next check, except
for the failure the checks themselves caused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from selkie.model import EndpointHealth, EndpointState, OperationAction, OperationStatus, new_id
from selkie.store.store import Store
from selkie.store.tables import EndpointHealthRow, EndpointRow, OperationRow


@dataclass(frozen=True, kw_only=True)
class Observed:
    """One check of one compute: whether it answered, and if not, why."""

    endpoint_id: str
    generation: int
    healthy: bool
    error: str | None = None


def record_checks(store: Store, observed: Sequence[Observed], at: datetime) -> None:
    """One pass's observations, in one transaction."""
    if not observed:
        return
    with store.write() as s:
        rows = {
            r.endpoint_id: r
            for r in s.execute(
                select(EndpointHealthRow).where(
                    EndpointHealthRow.endpoint_id.in_([o.endpoint_id for o in observed])
                )
            ).scalars()
        }
        for o in observed:
            _put(s, rows.get(o.endpoint_id), o, at)


def record_failed(
    store: Store, endpoint_id: str, reason: str, at: datetime, *, missed: int
) -> bool:
    """The checks failed the endpoint (it is ``failed`` with ``reason``): its health says
    so at the failed generation, and a ``health_check_failed`` operation tells when and
    why, in one transaction. False (nothing written) when the endpoint is not failed for
    this reason (it died first, or moved on)."""
    with store.write() as s:
        ep = s.get(EndpointRow, endpoint_id)
        if (
            ep is None
            or ep.current_state != EndpointState.FAILED.value
            or ep.failure_reason != reason[:4000]
        ):
            return False
        observed = Observed(
            endpoint_id=endpoint_id, generation=ep.generation, healthy=False, error=reason
        )
        _put(s, s.get(EndpointHealthRow, endpoint_id), observed, at)
        s.add(
            OperationRow(
                id=new_id("op"),
                project_id=ep.project_id,
                branch_id=ep.branch_id,
                endpoint_id=endpoint_id,
                action=OperationAction.HEALTH_CHECK_FAILED.value,
                # What it records (the compute marked failed and stopped) is done.
                status=OperationStatus.FINISHED.value,
                total_duration_ms=0,
                payload={"reason": reason, "missed_checks": missed},
            )
        )
        return True


def _put(s: Session, row: EndpointHealthRow | None, o: Observed, at: datetime) -> None:
    if row is None:
        s.add(
            EndpointHealthRow(
                endpoint_id=o.endpoint_id,
                generation=o.generation,
                healthy=o.healthy,
                checked_at=at,
                error=o.error,
            )
        )
        return
    row.generation, row.healthy, row.checked_at, row.error = o.generation, o.healthy, at, o.error


def endpoint_health(
    ep: EndpointRow, row: EndpointHealthRow | None
) -> tuple[EndpointHealth, datetime | None, str | None]:
    """(health, checked at, error) of an endpoint as its last observation says: that of
    its running compute, or the failure the checks caused; ``unknown`` otherwise."""
    if row is None or row.generation != ep.generation:
        return EndpointHealth.UNKNOWN, None, None
    if ep.current_state == EndpointState.ACTIVE.value:
        health = EndpointHealth.HEALTHY if row.healthy else EndpointHealth.UNHEALTHY
        return health, row.checked_at, row.error
    if ep.current_state == EndpointState.FAILED.value and not row.healthy:
        return EndpointHealth.UNHEALTHY, row.checked_at, row.error
    return EndpointHealth.UNKNOWN, None, None
