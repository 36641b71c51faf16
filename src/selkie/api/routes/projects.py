"""Projects, and the connection URIs of their endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from selkie.api import schemas
from selkie.api.deps import Ctl, Cursor, Limit, ProjectId, Who
from selkie.control.projects import BranchSpec, Created

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


@router.patch("/{project_id}", response_model=schemas.ProjectResponse)
def update_project(
    ctl: Ctl, who: Who, project_id: ProjectId, body: schemas.ProjectUpdateRequest
) -> schemas.ProjectResponse:
    spec = body.project
    project = ctl.projects.update(
        who,
        project_id,
        name=spec.name,
        default_endpoint_settings=_dump(spec.default_endpoint_settings),
        settings=_dump(spec.settings),
    )
    return schemas.ProjectResponse(project=project)


@router.delete("/{project_id}", response_model=schemas.ProjectDeletedResponse)
def delete_project(ctl: Ctl, who: Who, project_id: ProjectId) -> schemas.ProjectDeletedResponse:
    project, ops = ctl.projects.delete(who, project_id)
    return schemas.ProjectDeletedResponse(project=project, operations=ops)


@router.get("/{project_id}/usage", response_model=schemas.ProjectUsageResponse)
def project_usage(ctl: Ctl, who: Who, project_id: ProjectId) -> schemas.ProjectUsageResponse:
    """Compute usage of the current calendar month (UTC) so far."""
    ctl.projects.get(who, project_id)  # 404 unless the caller may see it
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    ((_, periods),) = ctl.consumption.history(
        who, start=start, end=end, granularity="monthly", project_ids=[project_id]
    )
    return schemas.ProjectUsageResponse(
        project_id=project_id,
        period_start=start,
        period_end=end,
        active_time_seconds=sum(p.active_time_seconds for p in periods),
        compute_time_seconds=sum(p.compute_time_seconds for p in periods),
    )


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


@consumption_router.get("/projects", response_model=schemas.ConsumptionResponse)
def consumption_history(
    ctl: Ctl,
    who: Who,
    from_: Annotated[datetime, Query(alias="from")],
    to: Annotated[datetime, Query()],
    granularity: Annotated[str, Query(pattern="^(hourly|daily|monthly)$")] = "daily",
    project_ids: Annotated[list[str] | None, Query(max_length=100)] = None,
) -> schemas.ConsumptionResponse:
    """Compute usage per project and period (active seconds, and CU-seconds), from the
    usage events written with every state transition. Never wakes a compute."""
    rows = ctl.consumption.history(
        who, start=from_, end=to, granularity=granularity, project_ids=project_ids
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
