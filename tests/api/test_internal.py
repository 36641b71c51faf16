"""The internal routes and the HTTP ControlPlane that calls them: a round trip through the
real app (the control plane behind it is a stand-in: this tests the wire, not the wake)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from selkie.api.app import create_app
from selkie.control import Control
from selkie.controlplane import Access, Activity, Backend, ControlPlane, PoolMember
from selkie.errors import Conflict, QuotaExceeded, StoreError, Unauthorized
from selkie.remote import HttpControlPlane

TOKEN = "s3cret-token"


class Plane(ControlPlane):
    def __init__(self) -> None:
        self.reported: list[Activity] = []

    async def get_access(self, endpoint_id: str, role: str) -> Access | None:
        if role != "owner":
            return None
        return Access(
            endpoint_id=endpoint_id,
            project_id="p",
            role=role,
            password_hash="*" + "A" * 40,
            require_tls=True,
            disabled=False,
            pooler_enabled=True,
            pooler_transaction_mode=False,
            pooler_max_backends=12,
        )

    async def wake(self, endpoint_id: str) -> Backend:
        if endpoint_id == "ep-quota":
            raise QuotaExceeded("project p has used its compute time")
        if endpoint_id == "ep-stopped":
            raise Conflict("endpoint ep-stopped is stopped")
        return Backend(endpoint_id=endpoint_id, host="10.0.0.7", port=3306, socket=Path("/nope"))

    async def report_activity(self, activity: list[Activity]) -> None:
        self.reported.extend(activity)

    async def compute_running(self, endpoint_id: str) -> bool:
        return endpoint_id == "ep-up"

    async def read_pool(self, branch_id: str) -> list[PoolMember]:
        if branch_id != "br-x":
            return []
        return [
            PoolMember(endpoint_id="ep-ro-1", active=True, failed=False),
            PoolMember(endpoint_id="ep-ro-2", active=False, failed=True),
        ]


def remote(control: Control, plane: Plane, token: str = TOKEN) -> HttpControlPlane:
    app = create_app(control, control_plane=plane, internal_token=TOKEN)
    return HttpControlPlane(
        ["http://api"], token, transport=httpx.ASGITransport(app=app), cache_ttl=0
    )


async def test_round_trip_and_errors(control: Control) -> None:
    plane = Plane()
    cp = remote(control, plane)
    access = await cp.get_access("ep-a", "owner")
    assert access == await plane.get_access("ep-a", "owner")
    assert await cp.get_access("ep-a/../x", "owner") is None  # never a path of its own
    assert await cp.get_access("ep a?x=1", "owner") is not None  # quoted, reaches the plane
    assert await cp.get_access("ep-a", "nobody") is None
    backend = await cp.wake("ep-a")
    assert (backend.host, backend.port, backend.socket) == ("10.0.0.7", 3306, None)
    with pytest.raises(QuotaExceeded, match="used its compute time"):
        await cp.wake("ep-quota")
    with pytest.raises(Conflict, match="stopped"):
        await cp.wake("ep-stopped")
    now = datetime.now(UTC)
    sent = Activity(
        endpoint_id="ep-a",
        sessions=2,
        last_active=now,
        bytes_to_clients=10,
        bytes_from_clients=5,
        statements=3,
        source="proxy-1",
        source_started=now,
    )
    await cp.report_activity([sent])
    assert plane.reported == [sent]
    assert await cp.compute_running("ep-up") is True
    assert await cp.compute_running("ep-a") is False
    assert await cp.compute_running("ep-a/../ep-up") is False  # never a path of its own
    assert await cp.read_pool("br-x") == await Plane().read_pool("br-x")
    assert await cp.read_pool("br-y") == []
    assert await cp.read_pool("br-x/../br-x") == []
    await cp.close()


async def test_internal_routes_need_the_token(control: Control) -> None:
    plane = Plane()
    wrong = remote(control, plane, token="wrong")
    with pytest.raises(Unauthorized):
        await wrong.wake("ep-a")
    await wrong.close()
    # Without a configured token the routes do not exist.
    app = create_app(control, control_plane=plane)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as c:
        r = await c.post(
            "/internal/v1/endpoints/ep-a/wake", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 404
        assert "/internal/v1/activity" not in app.openapi()["paths"]


async def test_unreachable_replicas_fail_over_then_fail_clearly(control: Control) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    cp = HttpControlPlane([dead, dead], TOKEN, timeout=2)
    with pytest.raises(StoreError, match="no control plane reachable"):
        await cp.wake("ep-a")
    await cp.close()
