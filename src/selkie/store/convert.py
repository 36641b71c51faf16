"""Rows to frozen snapshots. The only place that knows both shapes."""

from __future__ import annotations

from typing import Any

from selkie import model
from selkie.store.health import endpoint_health
from selkie.store.tables import (
    ApiKeyRow,
    BranchRow,
    DatabaseRow,
    EndpointHealthRow,
    EndpointRow,
    OperationRow,
    OrganizationRow,
    ProjectRow,
    RoleRow,
)


def organization(row: OrganizationRow) -> model.Organization:
    return model.Organization(
        id=row.id, name=row.name, created_at=row.created_at, updated_at=row.updated_at
    )


def api_key(row: ApiKeyRow) -> model.ApiKey:
    return model.ApiKey(
        id=row.id,
        name=row.name,
        org_id=row.org_id,
        admin=row.admin,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked=row.revoked_at is not None,
    )


def endpoint_settings(data: dict[str, Any]) -> model.EndpointSettings:
    return model.EndpointSettings(**data)


def project_settings(data: dict[str, Any]) -> model.ProjectSettings:
    values = dict(data)
    if "storage_mode" in values:
        values["storage_mode"] = model.StorageMode(values["storage_mode"])
    if "durability" in values:
        values["durability"] = model.Durability(values["durability"])
    return model.ProjectSettings(**values)


def project(row: ProjectRow, *, proxy_host: str) -> model.Project:
    return model.Project(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        region_id=row.region_id,
        mariadb_version=row.mariadb_version,
        proxy_host=proxy_host,
        default_endpoint_settings=endpoint_settings(row.default_endpoint_settings),
        settings=project_settings(row.settings),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def branch(row: BranchRow) -> model.Branch:
    return model.Branch(
        id=row.id,
        project_id=row.project_id,
        parent_id=row.parent_id,
        name=row.name,
        default=row.is_default,
        primary=row.is_default,
        current_state=model.BranchState(row.current_state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        parent_timestamp=row.parent_timestamp,
        parent_lsn=row.parent_lsn,
        protected=bool(row.protected),
        logical_size=row.logical_size,
        expires_at=row.expires_at,
    )


def endpoint(
    row: EndpointRow, *, domain: str, health: EndpointHealthRow | None = None
) -> model.Endpoint:
    """The endpoint; ``health``: its health checks' last observation (unknown without)."""
    observed, checked_at, health_error = endpoint_health(row, health)
    return model.Endpoint(
        id=row.id,
        project_id=row.project_id,
        branch_id=row.branch_id,
        type=model.EndpointType(row.type),
        host=f"{row.id}.{domain}",
        current_state=model.EndpointState(row.current_state),
        pending_state=model.EndpointState(row.pending_state) if row.pending_state else None,
        generation=row.generation,
        autoscaling_limit_min_cu=row.autoscaling_limit_min_cu,
        autoscaling_limit_max_cu=row.autoscaling_limit_max_cu,
        current_cu=row.current_cu,
        suspend_timeout_seconds=row.suspend_timeout_seconds,
        pooler_enabled=row.pooler_enabled,
        pooler_mode=model.PoolerMode(row.pooler_mode),
        disabled=row.disabled,
        last_active=row.last_active,
        started_at=row.started_at,
        suspended_at=row.suspended_at,
        failure_reason=row.failure_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        suspend_tier=(
            model.SuspendTier(row.suspend_tier)
            if row.suspend_tier and row.current_state == model.EndpointState.SUSPENDED.value
            else None
        ),
        next_event_at=(
            row.next_event_at if row.current_state == model.EndpointState.SUSPENDED.value else None
        ),
        health=observed,
        health_checked_at=checked_at,
        health_error=health_error,
    )


def role(row: RoleRow) -> model.Role:
    return model.Role(
        branch_id=row.branch_id,
        name=row.name,
        protected=row.protected,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def database(row: DatabaseRow) -> model.Database:
    return model.Database(
        id=row.id,
        branch_id=row.branch_id,
        name=row.name,
        owner_name=row.owner_name,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def operation(row: OperationRow) -> model.Operation:
    return model.Operation(
        id=row.id,
        project_id=row.project_id,
        branch_id=row.branch_id,
        endpoint_id=row.endpoint_id,
        action=model.OperationAction(row.action),
        status=model.OperationStatus(row.status),
        error=row.error,
        failures_count=row.failures_count,
        retry_at=row.retry_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        total_duration_ms=row.total_duration_ms,
        payload=dict(row.payload or {}),
    )
