"""The reconciler: at control-plane start, make recorded state and reality agree.

Observed (the driver's computes) and recorded (endpoint rows) are compared in a pure
function, :func:`plan`, which returns what to do; :func:`reconcile` then does it. No compute
survives a restart unaccounted for: one that should run is adopted, one that should not is
stopped, and an endpoint recorded as running whose compute is gone is marked failed. A
warm endpoint's frozen compute found after a crash is stopped (the driver thaws it first) and
the endpoint recorded cold: nothing stays frozen with no control plane watching it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from selkie.compute.base import ComputeInfo
from selkie.control.lifecycle import Lifecycle
from selkie.control.runner import STALE_AFTER, requeue_interrupted
from selkie.model import EndpointState, SuspendTier, utcnow
from selkie.store import Store, Usage
from selkie.store.tables import EndpointRow

log = logging.getLogger(__name__)
# Beyond a start's own timeout, how long a transition may look in flight before another
# control plane settles it.
SHARED_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class Recorded:
    endpoint_id: str
    state: EndpointState
    generation: int
    project_id: str = ""
    cu: float = 0.0
    # When a control plane last saw the compute running (a heartbeat), for usage.
    last_seen_alive: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class Plan:
    adopt: list[str] = field(default_factory=list)
    # Computes running that must not: stop them. Paired with the state to record after.
    stop: list[tuple[str, EndpointState | None]] = field(default_factory=list)
    # Endpoints recorded as running whose compute is gone.
    fail: list[str] = field(default_factory=list)
    # Endpoints caught mid-transition with no compute: settle them as suspended.
    settle: list[str] = field(default_factory=list)


def plan(
    recorded: list[Recorded],
    observed: list[ComputeInfo],
    *,
    now: datetime | None = None,
    grace: timedelta | None = None,
) -> Plan:
    """Decide, without side effects, what to do about each endpoint and compute.

    With ``grace`` (several control planes share the store), an endpoint whose row changed
    less than ``grace`` ago is left alone, whatever its state: a live control plane may be
    starting, suspending or running it, and what was observed may predate that.
    """

    def in_flight(rec: Recorded) -> bool:
        return (
            grace is not None
            and rec.updated_at is not None
            and rec.updated_at > (now or utcnow()) - grace
        )

    by_id = {r.endpoint_id: r for r in recorded if not in_flight(r)}
    skip = {r.endpoint_id for r in recorded if in_flight(r)}
    running = {c.endpoint_id for c in observed if c.running} - skip
    out = Plan()
    for endpoint_id in sorted(running):
        rec = by_id.get(endpoint_id)
        if rec is None or rec.state is EndpointState.DELETED:
            out.stop.append((endpoint_id, None))
        elif rec.state is EndpointState.ACTIVE:
            out.adopt.append(endpoint_id)
        elif rec.state in (
            EndpointState.STARTING,
            EndpointState.SUSPENDING,
            EndpointState.SUSPENDED,
        ):
            # Half-done: roll back to suspended; a queued start runs again and finishes it.
            # Suspended with a compute: a warm one, frozen; it is recorded cold once stopped.
            out.stop.append((endpoint_id, EndpointState.SUSPENDED))
        else:
            out.stop.append((endpoint_id, None))
    for rec in by_id.values():
        if rec.endpoint_id in running:
            continue
        if rec.state is EndpointState.ACTIVE:
            out.fail.append(rec.endpoint_id)
        elif rec.state in (EndpointState.STARTING, EndpointState.SUSPENDING):
            out.settle.append(rec.endpoint_id)
    return out


def _recorded(store: Store) -> list[Recorded]:
    with store.read() as s:
        return [
            Recorded(
                r.id,
                EndpointState(r.current_state),
                r.generation,
                r.project_id,
                r.autoscaling_limit_max_cu,
                r.last_seen_alive or r.started_at,
                r.updated_at,
            )
            for r in s.execute(select(EndpointRow)).scalars()
        ]


def _set_state(store: Store, rec: Recorded, new: EndpointState, reason: str | None) -> None:
    fields: dict[str, object] = {"pending_state": None, "compute_address": None}
    if new is EndpointState.SUSPENDED:
        fields["suspend_tier"] = SuspendTier.COLD.value
    if reason is not None:
        fields["failure_reason"] = reason
    usage = None
    if rec.state is EndpointState.ACTIVE:
        # Billed until the compute was last seen alive, not until this restart.
        usage = Usage(
            kind="stop",
            at=rec.last_seen_alive or utcnow(),
            cu=rec.cu,
            project_id=rec.project_id,
        )
    with store.write() as s:
        Store.transition_endpoint(
            s,
            rec.endpoint_id,
            expected_state=rec.state,
            expected_generation=rec.generation,
            new_state=new,
            usage=usage,
            **fields,
        )


async def reconcile(store: Store, lifecycle: Lifecycle, *, shared: bool | None = None) -> Plan:
    """Make the store and the computes agree. ``shared`` (default: on PostgreSQL) means
    other control planes may be at work: only their stale leftovers are touched."""
    if shared is None:
        shared = store.shared
    grace = timedelta(seconds=lifecycle.start_timeout) + SHARED_GRACE if shared else None
    requeued = await asyncio.to_thread(
        requeue_interrupted, store, stale_after=STALE_AFTER if shared else None
    )
    # Computes first, then the store: a compute started in between is recorded as changed
    # just now, and left alone, rather than observed as running with a stale record.
    observed = await lifecycle.driver.list_computes()
    recorded = await asyncio.to_thread(_recorded, store)
    todo = plan(recorded, observed, now=utcnow(), grace=grace)
    by_id = {r.endpoint_id: r for r in recorded}
    for endpoint_id in todo.adopt:
        await lifecycle.adopt(endpoint_id)
    for endpoint_id, after in todo.stop:
        await lifecycle.driver.stop(endpoint_id, timeout=lifecycle.stop_timeout)
        if after is not None:
            await asyncio.to_thread(_set_state, store, by_id[endpoint_id], after, None)
    for endpoint_id in todo.fail:
        await asyncio.to_thread(
            _set_state,
            store,
            by_id[endpoint_id],
            EndpointState.FAILED,
            "compute was not running when the control plane restarted",
        )
    for endpoint_id in todo.settle:
        await asyncio.to_thread(
            _set_state, store, by_id[endpoint_id], EndpointState.SUSPENDED, None
        )
    if not any((todo.adopt, todo.stop, todo.fail, todo.settle, requeued)):
        return todo
    log.info(
        "reconciled: %d adopted, %d stopped, %d failed, %d settled, %d operations requeued",
        len(todo.adopt),
        len(todo.stop),
        len(todo.fail),
        len(todo.settle),
        requeued,
    )
    return todo
