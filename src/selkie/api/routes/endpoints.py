"""Endpoints (computes) of a project, and their start/suspend/restart requests."""

from __future__ import annotations

import asyncio
import dataclasses

from fastapi import APIRouter, Request

from selkie import model
from selkie.api import schemas
from selkie.api.deps import Ctl, Cursor, EndpointId, Limit, ProjectId, Who
from selkie.api.runtime import runtime_of
from selkie.errors import Conflict
from selkie.model import OperationAction

router = APIRouter(prefix="/v1/projects/{project_id}/endpoints", tags=["endpoints"])


@router.get("", response_model=schemas.EndpointsResponse)
def list_endpoints(
    ctl: Ctl, who: Who, project_id: ProjectId, limit: Limit = 100, cursor: Cursor = None
) -> schemas.EndpointsResponse:
    page = ctl.endpoints.list(who, project_id, cursor=cursor, limit=limit)
    return schemas.EndpointsResponse(
        endpoints=page.items, pagination=schemas.Pagination(cursor=page.cursor)
    )


@router.post("", response_model=schemas.EndpointOperationsResponse, status_code=201)
def create_endpoint(
    ctl: Ctl, who: Who, project_id: ProjectId, body: schemas.EndpointCreateRequest
) -> schemas.EndpointOperationsResponse:
    spec = body.endpoint
    settings = spec.model_dump(
        include={"autoscaling_limit_min_cu", "autoscaling_limit_max_cu", "suspend_timeout_seconds"},
        exclude_none=True,
    )
    endpoint, ops = ctl.endpoints.create(
        who,
        project_id,
        branch_id=spec.branch_id,
        type=spec.type.value,
        settings=settings,
        pooler_enabled=spec.pooler_enabled,
        pooler_mode=spec.pooler_mode.value,
    )
    return schemas.EndpointOperationsResponse(endpoint=endpoint, operations=ops)


@router.get("/{endpoint_id}", response_model=schemas.EndpointResponse)
async def get_endpoint(
    ctl: Ctl, who: Who, project_id: ProjectId, endpoint_id: EndpointId, request: Request
) -> schemas.EndpointResponse:
    """The endpoint; a read-only one's ``replayed_lsn`` and ``replication_lag_seconds``
    are asked of its running compute's server (null while it is suspended)."""
    endpoint = await asyncio.to_thread(ctl.endpoints.get, who, project_id, endpoint_id)
    runtime = runtime_of(request)
    if endpoint.type is model.EndpointType.READ_ONLY and runtime is not None:
        status = await runtime.replica_status(endpoint.id)
        endpoint = dataclasses.replace(
            endpoint,
            replayed_lsn=status.replayed_lsn,
            replication_lag_seconds=status.replication_lag_seconds,
        )
    return schemas.EndpointResponse(endpoint=endpoint)


@router.patch("/{endpoint_id}", response_model=schemas.EndpointOperationsResponse)
def update_endpoint(
    ctl: Ctl,
    who: Who,
    project_id: ProjectId,
    endpoint_id: EndpointId,
    body: schemas.EndpointUpdateRequest,
) -> schemas.EndpointOperationsResponse:
    changes = body.endpoint.model_dump(exclude_none=True, mode="json")
    endpoint, ops = ctl.endpoints.update(who, project_id, endpoint_id, changes)
    return schemas.EndpointOperationsResponse(endpoint=endpoint, operations=ops)


@router.delete("/{endpoint_id}", response_model=schemas.EndpointOperationsResponse)
def delete_endpoint(
    ctl: Ctl, who: Who, project_id: ProjectId, endpoint_id: EndpointId
) -> schemas.EndpointOperationsResponse:
    endpoint, ops = ctl.endpoints.delete(who, project_id, endpoint_id)
    return schemas.EndpointOperationsResponse(endpoint=endpoint, operations=ops)


def _request(
    ctl: Ctl, who: Who, project_id: str, endpoint_id: str, action: OperationAction
) -> schemas.EndpointOperationsResponse:
    endpoint, ops = ctl.endpoints.request(who, project_id, endpoint_id, action)
    return schemas.EndpointOperationsResponse(endpoint=endpoint, operations=ops)


@router.post("/{endpoint_id}/start", response_model=schemas.EndpointOperationsResponse)
def start_endpoint(
    ctl: Ctl, who: Who, project_id: ProjectId, endpoint_id: EndpointId
) -> schemas.EndpointOperationsResponse:
    return _request(ctl, who, project_id, endpoint_id, OperationAction.START_COMPUTE)


@router.post("/{endpoint_id}/suspend", response_model=schemas.EndpointOperationsResponse)
def suspend_endpoint(
    ctl: Ctl, who: Who, project_id: ProjectId, endpoint_id: EndpointId
) -> schemas.EndpointOperationsResponse:
    return _request(ctl, who, project_id, endpoint_id, OperationAction.SUSPEND_COMPUTE)


@router.post("/{endpoint_id}/restart", response_model=schemas.EndpointOperationsResponse)
def restart_endpoint(
    ctl: Ctl, who: Who, project_id: ProjectId, endpoint_id: EndpointId
) -> schemas.EndpointOperationsResponse:
    return _request(ctl, who, project_id, endpoint_id, OperationAction.RESTART_COMPUTE)


@router.get("/{endpoint_id}/durability", response_model=schemas.DurabilityResponse)
async def endpoint_durability(
    ctl: Ctl, who: Who, project_id: ProjectId, endpoint_id: EndpointId, request: Request
) -> schemas.DurabilityResponse:
    """How durable the endpoint's commits are right now: whether the safekeeper follows its
    compute, the last GTID it holds and the last the archive holds, the archive lag, and
    whether the compute's commits wait for the safekeeper (``sync_commit``, asked of the
    compute's server now, whatever the project's ``durability`` setting says)."""
    endpoint = await asyncio.to_thread(ctl.endpoints.get, who, project_id, endpoint_id)
    project = await asyncio.to_thread(ctl.projects.get, who, project_id)
    runtime = runtime_of(request)
    if runtime is None:
        raise Conflict("durable storage is not run by this process")
    status = await runtime.durability(endpoint.id, project.settings.durability)
    return schemas.DurabilityResponse(**dataclasses.asdict(status))


@router.get("/{endpoint_id}/pooler", response_model=schemas.PoolerResponse)
def endpoint_pooler(
    ctl: Ctl, who: Who, project_id: ProjectId, endpoint_id: EndpointId, request: Request
) -> schemas.PoolerResponse:
    """The pooler's view of the endpoint, from this process's proxy: clients, backends in
    use and idle, clients waiting, pinned sessions."""
    endpoint = ctl.endpoints.get(who, project_id, endpoint_id)
    runtime = runtime_of(request)
    metrics = runtime.pool_metrics(endpoint_id) if runtime is not None else {}
    return schemas.PoolerResponse(
        endpoint_id=endpoint.id,
        pooler_enabled=endpoint.pooler_enabled,
        pooler_mode=endpoint.pooler_mode,
        metrics=schemas.PoolerMetrics(**metrics),
    )
