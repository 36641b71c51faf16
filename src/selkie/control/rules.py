"""Validation rules and row builders shared by the control-plane services."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from selkie import model
from selkie.errors import InvalidInput
from selkie.model import (
    EndpointState,
    EndpointType,
    OperationAction,
    OperationStatus,
    PoolerMode,
    StorageMode,
    utcnow,
)
from selkie.store.tables import (
    DatabaseRow,
    DroppedNameRow,
    EndpointRow,
    OperationRow,
    RoleRow,
    UsageEventRow,
)


def validate_endpoint_settings(
    data: dict[str, Any], base: model.EndpointSettings | None = None
) -> model.EndpointSettings:
    base = base or model.EndpointSettings()
    unknown = set(data) - {f.name for f in dataclasses.fields(model.EndpointSettings)}
    if unknown:
        raise InvalidInput(f"unknown endpoint settings: {', '.join(sorted(unknown))}")
    merged = dataclasses.replace(base, **{k: v for k, v in data.items() if v is not None})
    lo, hi = model.validate_cu_range(
        merged.autoscaling_limit_min_cu, merged.autoscaling_limit_max_cu
    )
    timeout = model.validate_suspend_timeout(merged.suspend_timeout_seconds)
    return model.EndpointSettings(
        autoscaling_limit_min_cu=lo, autoscaling_limit_max_cu=hi, suspend_timeout_seconds=timeout
    )


def validate_project_settings(
    data: dict[str, Any],
    base: model.ProjectSettings | None = None,
    *,
    plans: Collection[str] | None = None,
) -> model.ProjectSettings:
    base = base or model.ProjectSettings()
    unknown = set(data) - {f.name for f in dataclasses.fields(model.ProjectSettings)}
    if unknown:
        raise InvalidInput(f"unknown project settings: {', '.join(sorted(unknown))}")
    # None clears an optional setting (a quota, say) but cannot unset a required one.
    values = {
        k: v
        for k, v in data.items()
        if v is not None
        or k not in ("storage_mode", "require_tls", "durability", "history_retention_seconds")
    }
    if "require_tls" in values and not isinstance(values["require_tls"], bool):
        raise InvalidInput("require_tls must be true or false")
    if "storage_mode" in values:
        try:
            values["storage_mode"] = StorageMode(values["storage_mode"])
        except ValueError as exc:
            raise InvalidInput("storage_mode must be 'local' or 'pageserver'") from exc
    if "durability" in values:
        try:
            values["durability"] = model.Durability(values["durability"])
        except ValueError as exc:
            raise InvalidInput("durability must be 'async' or 'sync'") from exc
    if "history_retention_seconds" in values:
        retention = values["history_retention_seconds"]
        if (
            isinstance(retention, bool)
            or not isinstance(retention, int)
            or not 0 <= retention <= model.HISTORY_RETENTION_MAX
        ):
            raise InvalidInput(
                f"history_retention_seconds must be 0..{model.HISTORY_RETENTION_MAX}; "
                f"got {retention!r}"
            )
    merged = dataclasses.replace(base, **values)
    if merged.page_server_port is not None and not 1 <= merged.page_server_port <= 65535:
        raise InvalidInput("page_server_port must be 1..65535")
    if merged.storage_mode is StorageMode.PAGESERVER:
        if not merged.page_server_address or merged.page_server_port is None:
            raise InvalidInput(
                "storage_mode 'pageserver' needs page_server_address and page_server_port"
            )
        if merged.safekeeper_url and not merged.safekeeper_url.startswith(("http://", "https://")):
            raise InvalidInput("safekeeper_url must be an http:// or https:// URL")
    for name in (
        "max_active_endpoints",
        "compute_time_limit_seconds",
        "storage_limit_bytes",
    ):
        value = getattr(merged, name)
        if value is not None and (isinstance(value, bool) or value < 0):
            raise InvalidInput(f"{name} must be a non-negative integer")
    if merged.max_cu is not None:
        model.validate_cu("max_cu", merged.max_cu)
    if merged.plan is not None and plans is not None and merged.plan not in plans:
        raise InvalidInput(
            f"plan {merged.plan!r} is not configured; plans: {', '.join(sorted(plans))}"
        )
    return merged


def settings_dict(value: model.EndpointSettings | model.ProjectSettings) -> dict[str, Any]:
    data = dataclasses.asdict(value)
    return {
        k: (v.value if isinstance(v, StorageMode | model.Durability) else v)
        for k, v in data.items()
    }


def validate_endpoint_type(value: Any) -> EndpointType:
    try:
        etype = EndpointType(value)
    except ValueError as exc:
        raise InvalidInput("endpoint type must be 'read_write' or 'read_only'") from exc
    return etype


def validate_pooler_mode(value: Any) -> PoolerMode:
    try:
        return PoolerMode(value)
    except ValueError as exc:
        raise InvalidInput("pooler_mode must be 'session' or 'transaction'") from exc


def new_endpoint_row(
    *,
    project_id: str,
    branch_id: str,
    endpoint_type: EndpointType,
    settings: model.EndpointSettings,
    pooler_enabled: bool = False,
    pooler_mode: PoolerMode = PoolerMode.TRANSACTION,
) -> EndpointRow:
    return EndpointRow(
        id=model.new_id("ep"),
        project_id=project_id,
        branch_id=branch_id,
        type=endpoint_type.value,
        current_state=EndpointState.INIT.value,
        pending_state=None,
        generation=0,
        autoscaling_limit_min_cu=settings.autoscaling_limit_min_cu,
        autoscaling_limit_max_cu=settings.autoscaling_limit_max_cu,
        suspend_timeout_seconds=settings.suspend_timeout_seconds,
        pooler_enabled=pooler_enabled,
        pooler_mode=pooler_mode.value,
        disabled=False,
    )


def mark_endpoint_deleted(row: EndpointRow) -> None:
    """Deletion wins over any state, so it bumps the generation without a CAS check. An
    active endpoint stops being billed now, in the same transaction, and what was waiting
    to be done to it (a start, a suspend) is cancelled: there is nothing left to do it to."""
    session = object_session(row)
    if session is not None:
        cancel_waiting(session, OperationRow.endpoint_id == row.id, "the endpoint was deleted")
    if row.current_state == EndpointState.ACTIVE.value and session is not None:
        session.add(
            UsageEventRow(
                endpoint_id=row.id,
                project_id=row.project_id,
                kind="stop",
                at=utcnow(),
                cu=row.autoscaling_limit_max_cu,
                generation=row.generation + 1,
            )
        )
    row.current_state = EndpointState.DELETED.value
    row.current_cu = None
    row.pending_state = None
    row.generation = row.generation + 1
    row.deleted_at = utcnow()


# What removes data: never cancelled, whatever else is deleted meanwhile.
DELETIONS = frozenset(
    a.value
    for a in (
        OperationAction.DELETE_ENDPOINT,
        OperationAction.DELETE_TIMELINE,
        OperationAction.DELETE_PROJECT,
        OperationAction.EXPIRE_BRANCH,
    )
)


def cancel_waiting(s: Session, which: Any, why: str) -> None:
    """Operations still waiting to run (``which``: a condition on OperationRow) are
    cancelled, saying ``why``; deletions go on."""
    s.execute(
        update(OperationRow)
        .where(which)
        .where(OperationRow.status == OperationStatus.SCHEDULING.value)
        .where(OperationRow.action.not_in(DELETIONS))
        .values(status=OperationStatus.CANCELLED.value, error=why, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def copy_accounts(
    s: Session, from_branch_id: str, to_branch_id: str
) -> tuple[list[RoleRow], list[DatabaseRow]]:
    """A branch's roles and databases, copied to another branch (in the caller's
    transaction); the copies."""
    roles = [
        RoleRow(
            branch_id=to_branch_id,
            name=r.name,
            password_hash=r.password_hash,
            protected=r.protected,
        )
        for r in s.execute(select(RoleRow).where(RoleRow.branch_id == from_branch_id)).scalars()
    ]
    dbs = [
        DatabaseRow(branch_id=to_branch_id, name=d.name, owner_name=d.owner_name)
        for d in s.execute(
            select(DatabaseRow).where(DatabaseRow.branch_id == from_branch_id)
        ).scalars()
    ]
    dropped = [
        DroppedNameRow(branch_id=to_branch_id, kind=d.kind, name=d.name)
        for d in s.execute(
            select(DroppedNameRow).where(DroppedNameRow.branch_id == from_branch_id)
        ).scalars()
    ]
    s.add_all([*roles, *dbs, *dropped])
    s.flush()
    return roles, dbs


def mark_dropped(s: Session, branch_id: str, kind: str, name: str, *, dropped: bool) -> None:
    """Record that a role or database was deleted through the API (``dropped``), or that
    one of that name exists again; only recorded names are ever dropped from a compute."""
    row = s.execute(
        select(DroppedNameRow)
        .where(DroppedNameRow.branch_id == branch_id)
        .where(DroppedNameRow.kind == kind)
        .where(DroppedNameRow.name == name)
    ).scalar_one_or_none()
    if dropped and row is None:
        s.add(DroppedNameRow(branch_id=branch_id, kind=kind, name=name))
    elif not dropped and row is not None:
        s.delete(row)
