"""Roles and databases of a branch."""

from __future__ import annotations

from fastapi import APIRouter

from selkie.api import schemas
from selkie.api.deps import BranchId, Ctl, DatabaseName, ProjectId, RoleName, Who

router = APIRouter(prefix="/v1/projects/{project_id}/branches/{branch_id}", tags=["roles"])


@router.get("/roles", response_model=schemas.RolesResponse)
def list_roles(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId
) -> schemas.RolesResponse:
    return schemas.RolesResponse(roles=ctl.roles.list(who, project_id, branch_id))


@router.post("/roles", response_model=schemas.RoleOperationsResponse, status_code=201)
def create_role(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId, body: schemas.RoleCreateRequest
) -> schemas.RoleOperationsResponse:
    """Creates the role with a generated password, shown in this answer only."""
    role, ops = ctl.roles.create(who, project_id, branch_id, name=body.role.name)
    return schemas.RoleOperationsResponse(role=role, operations=ops)


@router.get("/roles/{role_name}", response_model=schemas.RoleResponse)
def get_role(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId, role_name: RoleName
) -> schemas.RoleResponse:
    return schemas.RoleResponse(role=ctl.roles.get(who, project_id, branch_id, role_name))


@router.delete("/roles/{role_name}", response_model=schemas.RoleOperationsResponse)
def delete_role(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId, role_name: RoleName
) -> schemas.RoleOperationsResponse:
    role, ops = ctl.roles.delete(who, project_id, branch_id, role_name)
    return schemas.RoleOperationsResponse(role=role, operations=ops)


@router.post("/roles/{role_name}/reset_password", response_model=schemas.RoleOperationsResponse)
def reset_role_password(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId, role_name: RoleName
) -> schemas.RoleOperationsResponse:
    """A new generated password, shown in this answer only."""
    role, ops = ctl.roles.reset_password(who, project_id, branch_id, role_name)
    return schemas.RoleOperationsResponse(role=role, operations=ops)


@router.get("/databases", response_model=schemas.DatabasesResponse, tags=["databases"])
def list_databases(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId
) -> schemas.DatabasesResponse:
    return schemas.DatabasesResponse(databases=ctl.databases.list(who, project_id, branch_id))


@router.post(
    "/databases",
    response_model=schemas.DatabaseOperationsResponse,
    status_code=201,
    tags=["databases"],
)
def create_database(
    ctl: Ctl,
    who: Who,
    project_id: ProjectId,
    branch_id: BranchId,
    body: schemas.DatabaseCreateRequest,
) -> schemas.DatabaseOperationsResponse:
    db, ops = ctl.databases.create(
        who, project_id, branch_id, name=body.database.name, owner_name=body.database.owner_name
    )
    return schemas.DatabaseOperationsResponse(database=db, operations=ops)


@router.get(
    "/databases/{database_name}", response_model=schemas.DatabaseResponse, tags=["databases"]
)
def get_database(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId, database_name: DatabaseName
) -> schemas.DatabaseResponse:
    db = ctl.databases.get(who, project_id, branch_id, database_name)
    return schemas.DatabaseResponse(database=db)


@router.delete(
    "/databases/{database_name}",
    response_model=schemas.DatabaseOperationsResponse,
    tags=["databases"],
)
def delete_database(
    ctl: Ctl, who: Who, project_id: ProjectId, branch_id: BranchId, database_name: DatabaseName
) -> schemas.DatabaseOperationsResponse:
    db, ops = ctl.databases.delete(who, project_id, branch_id, database_name)
    return schemas.DatabaseOperationsResponse(database=db, operations=ops)
