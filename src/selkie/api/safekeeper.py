"""The internal routes of `selkie safekeeper`: what the control plane asks of a safekeeper
in a process of its own (:class:`selkie.safekeeper.remote.RemoteSafekeeper` is the client).

Authenticated by the internal token (``SELKIE_INTERNAL_TOKEN``) as the control plane's
internal routes are; absent from any OpenAPI document. No password is sent: the safekeeper
derives the compute account's from the shared key. Ids in paths are checked before they
name anything on disk.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from selkie.api import errors
from selkie.api.limits import DEFAULT_MAX_BODY, BodyLimit
from selkie.api.routes.internal import check_internal_token
from selkie.archive import segments
from selkie.archive.layout import TimelineRef
from selkie.config import split_listen
from selkie.errors import ConfigError, InvalidInput
from selkie.safekeeper.accounts import ReplicationKey
from selkie.safekeeper.api import TimelineStatus
from selkie.safekeeper.service import Safekeeper

_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Longest wait a caller may ask for (catch-up, archiving), seconds.
_MAX_WAIT = 300.0

Id = Annotated[str, PathParam(pattern=_ID)]


def _safekeeper(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Safekeeper:
    check_internal_token(request, authorization)
    safekeeper: Safekeeper = request.app.state.safekeeper
    return safekeeper


Keeper = Annotated[Safekeeper, Depends(_safekeeper)]
router = APIRouter(prefix="/internal/v1/safekeeper", include_in_schema=False)


class FollowIn(BaseModel):
    project_id: str = Field(pattern=_ID)
    timeline_id: str = Field(pattern=_ID)
    # The compute's TCP address, host:port ([v6]:port).
    address: str = Field(min_length=3, max_length=300)
    start_seq: int = Field(ge=0)
    semi_sync: bool = False


class WaitIn(BaseModel):
    seq: int = Field(ge=0)
    timeout: float = Field(ge=0, le=_MAX_WAIT)


class Done(BaseModel):
    done: bool


class StatusOut(BaseModel):
    # The safekeeper's own status type: pydantic validates and serializes the dataclass.
    timelines: list[TimelineStatus]
    segments_shipped: int
    bytes_shipped: int


@router.post("/follows/{endpoint_id}", status_code=204)
async def follow(keeper: Keeper, endpoint_id: Id, body: FollowIn, request: Request) -> Response:
    try:
        host, port = split_listen(body.address)
    except ConfigError as exc:
        raise InvalidInput(exc.message) from exc
    key: ReplicationKey = request.app.state.key
    await keeper.attach(
        endpoint_id,
        TimelineRef(body.project_id, body.timeline_id),
        (host, port),
        start_seq=body.start_seq,
        semi_sync=body.semi_sync,
        creds=key.compute_account(),
    )
    return Response(status_code=204)


@router.delete("/follows/{endpoint_id}", status_code=204)
async def unfollow(keeper: Keeper, endpoint_id: Id) -> Response:
    await keeper.detach(endpoint_id)
    return Response(status_code=204)


@router.post("/follows/{endpoint_id}/catch_up", response_model=Done)
async def catch_up(keeper: Keeper, endpoint_id: Id, body: WaitIn) -> Done:
    return Done(done=await keeper.catch_up(endpoint_id, body.seq, body.timeout))


@router.get("/status", response_model=StatusOut)
async def status(keeper: Keeper) -> StatusOut:
    return StatusOut(
        timelines=await keeper.timelines(),
        segments_shipped=keeper.segments_shipped,
        bytes_shipped=keeper.bytes_shipped,
    )


_TIMELINE = "/projects/{project_id}/timelines/{timeline_id}"


@router.get(_TIMELINE + "/archived")
async def archived(keeper: Keeper, project_id: Id, timeline_id: Id) -> dict[str, int]:
    return {"seq": await keeper.archived_position(TimelineRef(project_id, timeline_id))}


@router.post(_TIMELINE + "/wait_archived", response_model=Done)
async def wait_archived(keeper: Keeper, project_id: Id, timeline_id: Id, body: WaitIn) -> Done:
    ref = TimelineRef(project_id, timeline_id)
    return Done(done=await keeper.wait_archived(ref, body.seq, body.timeout))


@router.get(_TIMELINE + "/tail")
async def tail(
    keeper: Keeper, project_id: Id, timeline_id: Id, after: Annotated[int, Query(ge=0)] = 0
) -> Response:
    """The local log after ``after`` as one segment (:mod:`selkie.archive.segments`),
    or 204 when the safekeeper holds nothing after it."""
    found = await keeper.local_tail(TimelineRef(project_id, timeline_id), after)
    if found is None:
        return Response(status_code=204)
    fde, records = found
    return Response(segments.encode(fde, records), media_type="application/octet-stream")


@router.post(_TIMELINE + "/close")
async def close(keeper: Keeper, project_id: Id, timeline_id: Id) -> dict[str, int]:
    """The timeline's compute stopped: everything received is durable and its open
    segment closed (the compute's files are not readable from here)."""
    return {"last_seq": await keeper.drain(TimelineRef(project_id, timeline_id), None)}


@router.get(_TIMELINE + "/appended_bytes")
async def appended_bytes(keeper: Keeper, project_id: Id, timeline_id: Id) -> dict[str, int]:
    return {"bytes": await keeper.appended_bytes(TimelineRef(project_id, timeline_id))}


def create_safekeeper_app(
    safekeeper: Safekeeper, key: ReplicationKey, internal_token: str
) -> FastAPI:
    """The safekeeper process's HTTP API: its internal routes and /healthz."""
    app = FastAPI(title="Selkie safekeeper", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.safekeeper = safekeeper
    app.state.key = key
    app.state.internal_token = internal_token
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=DEFAULT_MAX_BODY)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    return app
