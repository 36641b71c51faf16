"""What each console page shows, gathered from the services as the signed-in key (called
in a worker thread: the services are synchronous)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from selkie.api.console.charts import Bar, bars, human_bytes, steps
from selkie.control import Control
from selkie.errors import InvalidInput
from selkie.model import (
    Branch,
    Endpoint,
    EndpointState,
    EndpointType,
    OperationAction,
    Principal,
    SuspendTier,
)

if TYPE_CHECKING:
    from selkie.api.console.app import Console

PAGE = 1000


def projects(ctl: Control, who: Principal) -> list[Any]:
    return list(ctl.projects.list(who, cursor=None, limit=PAGE).items)


@dataclass(frozen=True)
class TreeRow:
    branch: Branch
    depth: int


def branch_tree(branches: list[Branch]) -> list[TreeRow]:
    """Branches parent first, each followed by its children (oldest first), with depth."""
    children: dict[str | None, list[Branch]] = {}
    ids = {b.id for b in branches}
    for b in sorted(branches, key=lambda b: b.created_at):
        parent = b.parent_id if b.parent_id in ids else None
        children.setdefault(parent, []).append(b)
    rows: list[TreeRow] = []

    def walk(parent: str | None, depth: int) -> None:
        for b in children.get(parent, []):
            rows.append(TreeRow(b, depth))
            walk(b.id, depth + 1)

    walk(None, 0)
    return rows


def state_of(ep: Endpoint) -> str:
    """What the console calls an endpoint's state: active, idle (suspended), starting, …"""
    if ep.disabled:
        return "disabled"
    pending = ep.pending_state
    if pending == EndpointState.ACTIVE and ep.current_state != EndpointState.ACTIVE:
        return "starting"
    if pending == EndpointState.SUSPENDED and ep.current_state == EndpointState.ACTIVE:
        return "suspending"
    if ep.current_state == EndpointState.SUSPENDED and ep.suspend_tier == SuspendTier.WARM:
        return "suspended (warm)"  # frozen: wakes in milliseconds
    return str(ep.current_state.value)


def project(console: Console, who: Principal, project_id: str) -> dict[str, Any]:
    ctl = console.control
    proj = ctl.projects.get(who, project_id)
    branches = list(ctl.branches.list(who, project_id, cursor=None, limit=PAGE).items)
    endpoints = list(ctl.endpoints.list(who, project_id, cursor=None, limit=PAGE).items)
    by_branch: dict[str, dict[str, Any]] = {}
    for b in branches:
        roles = ctl.roles.list(who, project_id, b.id)
        dbs = ctl.databases.list(who, project_id, b.id)
        eps = [e for e in endpoints if e.branch_id == b.id]
        uris: dict[str, str] = {}
        if eps and roles and dbs:
            owner = next((r.name for r in roles if r.name == dbs[0].owner_name), roles[0].name)
            primary = next((e for e in eps if e.type is EndpointType.READ_WRITE), eps[0])
            for pooled in (False, True):
                uri = ctl.connections.uri(
                    who,
                    project_id,
                    role_name=owner,
                    database_name=dbs[0].name,
                    branch_id=b.id,
                    endpoint_id=primary.id,
                    pooled=pooled,
                )
                uris["pooled" if pooled else "direct"] = uri.connection_uri
            if any(e.type is EndpointType.READ_ONLY for e in eps):
                # The branch's read pool: its read-only endpoints together.
                uris["read-pool"] = uris["direct"].replace(primary.id, f"{b.id}-ro", 1)
        by_branch[b.id] = {"roles": roles, "databases": dbs, "endpoints": eps, "uris": uris}
    operations = list(ctl.operations.list(who, project_id, cursor=None, limit=25).items)
    return {
        "project": proj,
        "tree": branch_tree(branches),
        "branches": by_branch,
        "endpoints": endpoints,
        "states": {e.id: state_of(e) for e in endpoints},
        "operations": operations,
    }


def endpoint(console: Console, who: Principal, project_id: str, endpoint_id: str) -> dict[str, Any]:
    ctl = console.control
    proj = ctl.projects.get(who, project_id)
    ep = ctl.endpoints.get(who, project_id, endpoint_id)
    ops = [
        o
        for o in ctl.operations.list(who, project_id, cursor=None, limit=PAGE).items
        if o.endpoint_id == endpoint_id
    ]
    sizes = sorted(
        (o.created_at, float(o.payload["to_cu"]))
        for o in ops
        if o.action == OperationAction.AUTOSCALE and o.error is None and "to_cu" in o.payload
    )
    first = ep.current_cu or ep.autoscaling_limit_min_cu
    if sizes:
        earliest = min(o.created_at for o in ops)
        first_size = next(
            (
                float(o.payload["from_cu"])
                for o in sorted(ops, key=lambda o: o.created_at)
                if o.action == OperationAction.AUTOSCALE and o.payload.get("from_cu") is not None
            ),
            sizes[0][1],
        )
        points = [(earliest, first_size), *sizes]
    else:
        points = [(ep.started_at or ep.created_at, first)]
    runtime = console.runtime
    wakes = runtime.recent_starts(endpoint_id) if runtime is not None else []
    pool = runtime.pool_metrics(endpoint_id) if runtime is not None else {}
    return {
        "project": proj,
        "endpoint": ep,
        "state": state_of(ep),
        "wakes": list(reversed(wakes))[:20],
        "size_chart": steps(points, until=datetime.now(UTC), title="size (CU) over time"),
        "pool": pool,
        "operations": ops[:25],
    }


def endpoint_changes(form: dict[str, str]) -> dict[str, Any]:
    """The settings form's fields as an endpoint update (numbers checked here, the rest by
    the service, which refuses what the operator alone may set)."""
    changes: dict[str, Any] = {}
    try:
        for name in ("autoscaling_limit_min_cu", "autoscaling_limit_max_cu"):
            if form.get(name):
                changes[name] = float(form[name])
        if form.get("suspend_timeout_seconds"):
            changes["suspend_timeout_seconds"] = int(form["suspend_timeout_seconds"])
    except ValueError as exc:
        raise InvalidInput("sizes are numbers of CU, the timeout whole seconds") from exc
    if "pooler_enabled" in form:
        changes["pooler_enabled"] = form["pooler_enabled"] == "on"
    return changes


def usage(console: Console, who: Principal, project_id: str) -> dict[str, Any]:
    ctl = console.control
    proj = ctl.projects.get(who, project_id)
    current = ctl.consumption.current(who, project_id)
    u = current.usage
    period = u.timeframe_start.strftime("%Y-%m")
    invoice = ctl.consumption.invoice(who, project_id, period)
    chart = bars(
        [
            Bar(
                "compute",
                u.compute_time_seconds / 3600,
                f"{u.compute_time_seconds / 3600:.3f} CU-h",
            ),
            Bar(
                "storage",
                u.data_storage_bytes_hour / 2**30,
                f"{u.data_storage_bytes_hour / 2**30:.3f} GiB-h",
            ),
            Bar("transfer", u.data_transfer_bytes / 2**20, human_bytes(u.data_transfer_bytes)),
            Bar("written", u.written_data_bytes / 2**20, human_bytes(u.written_data_bytes)),
        ],
        title=f"usage in {period}",
    )
    return {"project": proj, "current": current, "usage": u, "invoice": invoice, "chart": chart}


def sql_targets(console: Console, who: Principal, project_id: str) -> dict[str, Any]:
    ctl = console.control
    proj = ctl.projects.get(who, project_id)
    endpoints = list(ctl.endpoints.list(who, project_id, cursor=None, limit=PAGE).items)
    branches = {b.id: b for b in ctl.branches.list(who, project_id, cursor=None, limit=PAGE).items}
    roles: dict[str, list[str]] = {}
    databases: dict[str, list[str]] = {}
    for e in endpoints:
        roles[e.id] = [r.name for r in ctl.roles.list(who, project_id, e.branch_id)]
        databases[e.id] = [d.name for d in ctl.databases.list(who, project_id, e.branch_id)]
    return {
        "project": proj,
        "endpoints": endpoints,
        "branch_names": {k: b.name for k, b in branches.items()},
        "roles": roles,
        "databases": databases,
    }
