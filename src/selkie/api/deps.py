"""Request dependencies: the control plane, the caller, pagination and path parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from selkie.api.ratelimit import RateLimiter
from selkie.control import Control
from selkie.errors import Unauthorized
from selkie.model import Principal

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")

ID_PATTERN = r"^[A-Za-z0-9_.\-]+$"
NAME_PATTERN = r"^[A-Za-z0-9_$]+$"


def control(request: Request) -> Control:
    ctl: Control = request.app.state.control
    return ctl


def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    ctl: Control = request.app.state.control
    who = ctl.api_keys.authenticate(credentials.credentials)
    spend(request, who.key_id)
    return who


def spend(request: Request, key_id: int) -> None:
    """One request of the key's budget (the per-key rate limit, the console's pages and
    sign-ins included); RateLimited when it has none left."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        limiter.take(key_id)


Ctl = Annotated[Control, Depends(control)]
Who = Annotated[Principal, Depends(principal)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="The cursor of the previous page's answer")
]
ProjectId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
BranchId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
EndpointId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
OperationId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
RoleName = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
DatabaseName = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
