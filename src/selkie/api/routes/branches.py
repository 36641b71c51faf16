"""Branches of a project."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request

from selkie.api import schemas
from selkie.api.deps import (
    ID_PATTERN,
    NAME_PATTERN,
    BranchId,
    Ctl,
    Cursor,
    Limit,
    ProjectId,
    Who,
)
from selkie.api.routes.projects import created_response
from selkie.api.runtime import runtime_of
from selkie.errors import Conflict

router = APIRouter(prefix="/v1/projects/{project_id}/branches", tags=["branches"])


@router.get("", response_model=schemas.BranchesResponse)
def list_branches(
    ctl: Ctl, who: Who, project_id: ProjectId, limit: Limit = 100, cursor: Cursor = None
) -> schemas.BranchesResponse:
    page = ctl.branches.list(who, project_id, cursor=cursor, limit=limit)
    return schemas.BranchesResponse(
        branches=page.items, pagination=schemas.Pagination(cursor=page.cursor)
    )


@router.post("", response_model=schemas.CreatedResponse, status_code=201)
def create_branch(
    ctl: Ctl, who: Who, project_id: ProjectId, body: schemas.BranchCreateRequest | None = None
) -> schemas.CreatedResponse:
    body = body or schemas.BranchCreateRequest()
    created = ctl.branches.create(
        who,
        project_id,
        name=body.branch.name,
        parent_id=body.branch.parent_id,
        parent_timestamp=body.branch.parent_timestamp,
        parent_lsn=body.branch.parent_lsn,
        endpoints=[e.model_dump(exclude_none=True) for e in body.endpoints],
        expires_at=body.branch.expires_at,
    )
    return created_response(created)


@router.get("/{branch_id}", response_model=schemas.BranchResponse)
def get_branch(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId
) -> schemas.BranchResponse:
    return schemas.BranchResponse(branch=ctl.branches.get(who, project_id, branch_id))


@router.patch("/{branch_id}", response_model=schemas.BranchResponse)
def update_branch(
    ctl: Ctl,
    who: Who,
    project_id: ProjectId,
    branch_id: BranchId,
    body: schemas.BranchUpdateRequest,
) -> schemas.BranchResponse:
    change = body.branch
    branch = ctl.branches.update(
        who,
        project_id,
        branch_id,
        name=change.name,
        protected=change.protected,
        # Left out: unchanged; null: the branch no longer expires.
        expires_at=change.expires_at if "expires_at" in change.model_fields_set else ...,
    )
    return schemas.BranchResponse(branch=branch)


@router.get("/{branch_id}/compare_schema", response_model=schemas.SchemaDiffResponse)
async def compare_schema(
    ctl: Ctl,
    who: Who,
    project_id: ProjectId,
    branch_id: BranchId,
    request: Request,
    base_branch_id: Annotated[str, Query(min_length=1, max_length=64, pattern=ID_PATTERN)],
    db_name: Annotated[str, Query(min_length=1, max_length=64, pattern=NAME_PATTERN)],
) -> schemas.SchemaDiffResponse:
    """A unified diff of ``db_name``'s schema on ``base_branch_id`` and this branch (tables,
    views, routines, triggers as SHOW CREATE prints them). Wakes both branches' endpoints."""
    for bid in (branch_id, base_branch_id):
        await asyncio.to_thread(ctl.branches.get, who, project_id, bid)  # scoped: 404
    runtime = runtime_of(request)
    if runtime is None:
        raise Conflict("schemas are compared where computes are run (selkie up, selkie api)")
    diff = await runtime.compare_schema(base_branch_id, branch_id, db_name)
    return schemas.SchemaDiffResponse(diff=diff)


@router.post("/{branch_id}/set_as_default", response_model=schemas.BranchResponse)
def set_as_default(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId
) -> schemas.BranchResponse:
    """Make this the project's default branch."""
    return schemas.BranchResponse(branch=ctl.branches.set_as_default(who, project_id, branch_id))


@router.post("/{branch_id}/restore", response_model=schemas.BranchOperationsResponse)
def restore_branch(
    ctl: Ctl,
    who: Who,
    project_id: ProjectId,
    branch_id: BranchId,
    body: schemas.BranchRestoreRequest,
) -> schemas.BranchOperationsResponse:
    """Point-in-time restore. Runs as an operation (its payload shows progress); the
    branch's endpoint restarts on the restored data, and a client that connects meanwhile
    is held until it can."""
    branch, ops = ctl.restores.restore(
        who,
        project_id,
        branch_id,
        source_branch_id=body.source_branch_id,
        source_timestamp=body.source_timestamp,
        source_lsn=body.source_lsn,
        preserve_under_name=body.preserve_under_name,
    )
    return schemas.BranchOperationsResponse(branch=branch, operations=ops)


@router.delete("/{branch_id}", response_model=schemas.BranchOperationsResponse)
def delete_branch(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId
) -> schemas.BranchOperationsResponse:
    branch, ops = ctl.branches.delete(who, project_id, branch_id)
    return schemas.BranchOperationsResponse(branch=branch, operations=ops)
