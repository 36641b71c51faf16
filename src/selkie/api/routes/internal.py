"""Internal routes: the ControlPlane interface over HTTP, for proxies running as separate
replicas (:class:`selkie.control.remote.HttpControlPlane` is the client).

They are authenticated by a shared token (``SELKIE_INTERNAL_TOKEN``), not by API keys, and
are absent from the public OpenAPI document. Without a configured token they answer 404.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, Field

from selkie.controlplane import Activity, ControlPlane
from selkie.errors import NotFound, Unauthorized

router = APIRouter(prefix="/internal/v1", tags=["internal"], include_in_schema=False)


def check_internal_token(request: Request, authorization: str | None) -> None:
    """The request carries the app's internal token as a bearer token (NotFound when the
    app has none: its internal routes are off; Unauthorized otherwise)."""
    token: str = getattr(request.app.state, "internal_token", "")
    if not token:
        raise NotFound("not found")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("internal routes need the internal token")


def _control_plane(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> ControlPlane:
    control: ControlPlane | None = getattr(request.app.state, "control_plane", None)
    if control is None:
        raise NotFound("not found")
    check_internal_token(request, authorization)
    return control


Plane = Annotated[ControlPlane, Depends(_control_plane)]
Name = Annotated[str, Field(min_length=1, max_length=64)]


class AccessOut(BaseModel):
    endpoint_id: str
    project_id: str
    role: str
    password_hash: str
    require_tls: bool
    disabled: bool
    pooler_enabled: bool
    pooler_transaction_mode: bool
    pooler_max_backends: int


class BackendOut(BaseModel):
    endpoint_id: str
    host: str | None
    port: int | None
    socket: str | None


class ActivityIn(BaseModel):
    endpoint_id: Name
    sessions: int = Field(ge=0)
    last_active: datetime | None
    bytes_to_clients: int = Field(ge=0)
    bytes_from_clients: int = Field(ge=0)
    statements: int = Field(ge=0)
    source: str = Field(default="", max_length=64)
    source_started: datetime | None = None


class ActivityReport(BaseModel):
    activity: list[ActivityIn] = Field(max_length=100_000)


@router.get("/endpoints/{endpoint_id}/roles/{role}/access", response_model=AccessOut)
async def get_access(plane: Plane, endpoint_id: str, role: str) -> AccessOut:
    access = await plane.get_access(endpoint_id, role)
    if access is None:
        raise NotFound(f"no role {role} on endpoint {endpoint_id}")
    return AccessOut(**access.__dict__)


@router.post("/endpoints/{endpoint_id}/wake", response_model=BackendOut)
async def wake(plane: Plane, endpoint_id: str) -> BackendOut:
    backend = await plane.wake(endpoint_id)
    return BackendOut(
        endpoint_id=backend.endpoint_id,
        host=backend.host,
        port=backend.port,
        socket=str(backend.socket) if backend.socket else None,
    )


class RunningOut(BaseModel):
    running: bool


@router.get("/endpoints/{endpoint_id}/running", response_model=RunningOut)
async def compute_running(plane: Plane, endpoint_id: str) -> RunningOut:
    return RunningOut(running=await plane.compute_running(endpoint_id))


class PoolMemberOut(BaseModel):
    endpoint_id: str
    active: bool
    failed: bool


class ReadPoolOut(BaseModel):
    members: list[PoolMemberOut]


@router.get("/branches/{branch_id}/read_pool", response_model=ReadPoolOut)
async def read_pool(plane: Plane, branch_id: str) -> ReadPoolOut:
    members = await plane.read_pool(branch_id)
    return ReadPoolOut(members=[PoolMemberOut(**m.__dict__) for m in members])


@router.post("/activity", status_code=204)
async def report_activity(plane: Plane, report: ActivityReport) -> Response:
    await plane.report_activity([Activity(**a.model_dump()) for a in report.activity])
    return Response(status_code=204)
