"""Projects, and the connection URIs of their endpoints."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from selkie.api import schemas
from selkie.api.deps import Ctl, Cursor, Limit, ProjectId, Who
from selkie.control.base import Created
from selkie.control.projects import BranchSpec

router = APIRouter(prefix="/v1/projects", tags=["projects"])


def created_response(created: Created) -> schemas.CreatedResponse:
    return schemas.CreatedResponse(
        project=created.project,
        branch=created.branch,
        endpoints=created.endpoints,
        roles=created.roles,
        databases=created.databases,
        operations=created.operations,
        connection_uris=created.connection_uris,
    )


def _dump(model: Any) -> dict[str, Any] | None:
    return None if model is None else dict(model.model_dump(exclude_unset=True))


@router.get("", response_model=schemas.ProjectsResponse)
def list_projects(
    ctl: Ctl,
    who: Who,
    limit: Limit = 100,
    cursor: Cursor = None,
    org_id: Annotated[str | None, Query(max_length=64)] = None,
    search: Annotated[str | None, Query(max_length=64)] = None,
) -> schemas.ProjectsResponse:
    page = ctl.projects.list(who, cursor=cursor, limit=limit, org_id=org_id, search=search)
    return schemas.ProjectsResponse(
        projects=page.items, pagination=schemas.Pagination(cursor=page.cursor)
    )


@router.post("", response_model=schemas.CreatedResponse, status_code=201)
def create_project(
    ctl: Ctl, who: Who, body: schemas.ProjectCreateRequest | None = None
) -> schemas.CreatedResponse:
    spec = (body or schemas.ProjectCreateRequest()).project
    branch = spec.branch
    created = ctl.projects.create(
        who,
        name=spec.name,
        org_id=spec.org_id,
        region_id=spec.region_id,
        default_endpoint_settings=_dump(spec.default_endpoint_settings),
        settings=_dump(spec.settings),
        branch=BranchSpec(**branch.model_dump()) if branch else None,
    )
    return created_response(created)


@router.get("/{project_id}", response_model=schemas.ProjectResponse)
def get_project(ctl: Ctl, who: Who, project_id: ProjectId) -> schemas.ProjectResponse:
    return schemas.ProjectResponse(project=ctl.projects.get(who, project_id))


@router.patch("/{project_id}", response_model=schemas.ProjectOperationsResponse)
def update_project(
    ctl: Ctl, who: Who, project_id: ProjectId, body: schemas.ProjectUpdateRequest
) -> schemas.ProjectOperationsResponse:
    """Change the project. A new ``settings.durability`` reaches its running computes
    through the ``apply_config`` operations in the answer (within a second or two); each
    endpoint's ``…/durability`` shows what its compute does."""
    spec = body.project
    project, ops = ctl.projects.update(
        who,
        project_id,
        name=spec.name,
        default_endpoint_settings=_dump(spec.default_endpoint_settings),
        settings=_dump(spec.settings),
    )
    return schemas.ProjectOperationsResponse(project=project, operations=ops)


@router.delete("/{project_id}", response_model=schemas.ProjectOperationsResponse)
def delete_project(ctl: Ctl, who: Who, project_id: ProjectId) -> schemas.ProjectOperationsResponse:
    project, ops = ctl.projects.delete(who, project_id)
    return schemas.ProjectOperationsResponse(project=project, operations=ops)


@router.get("/{project_id}/usage", response_model=schemas.ProjectUsageResponse)
def project_usage(ctl: Ctl, who: Who, project_id: ProjectId) -> schemas.ProjectUsageResponse:
    """Usage of the current calendar month (UTC) so far, storage now, and the project's
    quotas: ``quota.exceeded`` says why computes may not start (empty when they may)."""
    cur = ctl.consumption.current(who, project_id)
    u = cur.usage
    return schemas.ProjectUsageResponse(
        project_id=project_id,
        plan=cur.plan,
        period_start=u.timeframe_start,
        period_end=u.timeframe_end,
        active_time_seconds=u.active_time_seconds,
        compute_time_seconds=u.compute_time_seconds,
        written_data_bytes=u.written_data_bytes,
        data_transfer_bytes=u.data_transfer_bytes,
        data_storage_bytes_hour=u.data_storage_bytes_hour,
        instant_restore_bytes_hour=u.instant_restore_bytes_hour,
        storage_bytes=cur.storage_bytes,
        quota=schemas.QuotaOut(
            compute_time_limit_seconds=cur.compute_time_limit_seconds,
            storage_limit_bytes=cur.storage_limit_bytes,
            exceeded=cur.quota_exceeded,
        ),
    )


@router.get("/{project_id}/invoices/{period}", response_model=schemas.InvoiceResponse)
def project_invoice(
    ctl: Ctl,
    who: Who,
    project_id: ProjectId,
    period: Annotated[str, Path(pattern=r"^\d{4}-\d{2}$", examples=["2026-11"])],
) -> schemas.InvoiceResponse:
    """The invoice for a calendar month (``YYYY-MM``, UTC), priced by the project's plan:
    one line each for compute, storage, data transfer and written data. Amounts are decimal
    strings; ``status`` is ``open`` while the month runs."""
    return schemas.InvoiceResponse(invoice=ctl.consumption.invoice(who, project_id, period))


@router.get("/{project_id}/connection_uri", response_model=schemas.ConnectionUriResponse)
def connection_uri(
    ctl: Ctl,
    who: Who,
    project_id: ProjectId,
    role_name: Annotated[str, Query(min_length=1, max_length=64)],
    database_name: Annotated[str, Query(min_length=1, max_length=64)],
    branch_id: Annotated[str | None, Query(max_length=64)] = None,
    endpoint_id: Annotated[str | None, Query(max_length=64)] = None,
    pooled: bool = False,
) -> schemas.ConnectionUriResponse:
    """The proxy URI for a role and database. Passwords are never stored, so the URI carries
    none: use the password shown when the role was created or its password was reset."""
    uri = ctl.connections.uri(
        who,
        project_id,
        role_name=role_name,
        database_name=database_name,
        branch_id=branch_id,
        endpoint_id=endpoint_id,
        pooled=pooled,
    )
    return schemas.ConnectionUriResponse(
        uri=uri.connection_uri, connection_parameters=uri.connection_parameters
    )


consumption_router = APIRouter(prefix="/v1/consumption_history", tags=["consumption"])


CSV_COLUMNS = (
    "project_id",
    "timeframe_start",
    "timeframe_end",
    "active_time_seconds",
    "compute_time_seconds",
    "written_data_bytes",
    "data_transfer_bytes",
    "data_storage_bytes_hour",
    "instant_restore_bytes_hour",
)


@consumption_router.get(
    "/projects",
    response_model=schemas.ConsumptionResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def consumption_history(
    ctl: Ctl,
    who: Who,
    from_: Annotated[datetime, Query(alias="from")],
    to: Annotated[datetime, Query()],
    granularity: Annotated[str, Query(pattern="^(hourly|daily|monthly)$")] = "daily",
    project_ids: Annotated[list[str] | None, Query(max_length=100)] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Any:
    """Usage per project and period: active seconds and CU-seconds from the usage events
    written with every state transition (exact to the second); written data, data
    transfer and storage byte-hours from hourly counters. Never wakes a compute.
    ``format=csv`` gives one row per project and period."""
    rows = ctl.consumption.history(
        who, start=from_, end=to, granularity=granularity, project_ids=project_ids
    )
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for pid, periods in rows:
            for p in periods:
                writer.writerow(
                    [
                        pid,
                        p.timeframe_start.isoformat(),
                        p.timeframe_end.isoformat(),
                        *(getattr(p, c) for c in CSV_COLUMNS[3:]),
                    ]
                )
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="consumption.csv"'},
        )
    return schemas.ConsumptionResponse(
        projects=[
            schemas.ProjectConsumption(
                project_id=pid,
                consumption=[schemas.ConsumptionPeriod(**p.__dict__) for p in periods],
            )
            for pid, periods in rows
        ]
    )
