"""API keys and organizations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from selkie.api import schemas
from selkie.api.deps import ID_PATTERN, Ctl, Cursor, Limit, Who

router = APIRouter(tags=["api keys"])


@router.get("/v1/api_keys", response_model=schemas.ApiKeysResponse)
def list_api_keys(
    ctl: Ctl, who: Who, limit: Limit = 100, cursor: Cursor = None
) -> schemas.ApiKeysResponse:
    page = ctl.api_keys.list(who, cursor=cursor, limit=limit)
    return schemas.ApiKeysResponse(
        api_keys=page.items, pagination=schemas.Pagination(cursor=page.cursor)
    )


@router.post("/v1/api_keys", response_model=schemas.ApiKeyCreatedResponse, status_code=201)
def create_api_key(
    ctl: Ctl, who: Who, body: schemas.ApiKeyCreateRequest
) -> schemas.ApiKeyCreatedResponse:
    """The key's secret is in this answer only; the store keeps its hash."""
    key, secret = ctl.api_keys.create(who, name=body.key_name, org_id=body.org_id, admin=body.admin)
    return schemas.ApiKeyCreatedResponse(
        id=key.id,
        key=secret,
        name=key.name,
        org_id=key.org_id,
        admin=key.admin,
        created_at=key.created_at.isoformat(),
    )


@router.delete("/v1/api_keys/{key_id}", response_model=schemas.ApiKeysResponse)
def revoke_api_key(
    ctl: Ctl, who: Who, key_id: Annotated[int, Path(ge=1, le=2**31 - 1)]
) -> schemas.ApiKeysResponse:
    key = ctl.api_keys.revoke(who, key_id)
    return schemas.ApiKeysResponse(api_keys=[key], pagination=schemas.Pagination())


@router.get("/v1/organizations", response_model=schemas.OrganizationsResponse, tags=["orgs"])
def list_organizations(
    ctl: Ctl, who: Who, limit: Limit = 100, cursor: Cursor = None
) -> schemas.OrganizationsResponse:
    page = ctl.organizations.list(who, cursor=cursor, limit=limit)
    return schemas.OrganizationsResponse(
        organizations=page.items, pagination=schemas.Pagination(cursor=page.cursor)
    )


@router.post(
    "/v1/organizations",
    response_model=schemas.OrganizationResponse,
    status_code=201,
    tags=["orgs"],
)
def create_organization(
    ctl: Ctl, who: Who, body: schemas.OrganizationCreateRequest
) -> schemas.OrganizationResponse:
    """Admin keys only."""
    return schemas.OrganizationResponse(
        organization=ctl.organizations.create(who, name=body.organization.name)
    )


@router.get(
    "/v1/organizations/{org_id}", response_model=schemas.OrganizationResponse, tags=["orgs"]
)
def get_organization(
    ctl: Ctl,
    who: Who,
    org_id: Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)],
) -> schemas.OrganizationResponse:
    return schemas.OrganizationResponse(organization=ctl.organizations.get(who, org_id))
