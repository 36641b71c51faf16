"""The operations log of a project."""

from __future__ import annotations

from fastapi import APIRouter

from selkie.api import schemas
from selkie.api.deps import Ctl, Cursor, Limit, OperationId, ProjectId, Who

router = APIRouter(prefix="/v1/projects/{project_id}/operations", tags=["operations"])


@router.get("", response_model=schemas.OperationsResponse)
def list_operations(
    ctl: Ctl, who: Who, project_id: ProjectId, limit: Limit = 100, cursor: Cursor = None
) -> schemas.OperationsResponse:
    page = ctl.operations.list(who, project_id, cursor=cursor, limit=limit)
    return schemas.OperationsResponse(
        operations=page.items, pagination=schemas.Pagination(cursor=page.cursor)
    )


@router.get("/{operation_id}", response_model=schemas.OperationResponse)
def get_operation(
    ctl: Ctl, who: Who, project_id: ProjectId, operation_id: OperationId
) -> schemas.OperationResponse:
    return schemas.OperationResponse(operation=ctl.operations.get(who, project_id, operation_id))
