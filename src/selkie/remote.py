"""The ControlPlane interface over HTTP: what a proxy replica uses to reach ``selkie api``
replicas (their internal routes, :mod:`selkie.api.routes.internal`).

Several API URLs may be given: a request goes to the one that answered last, and moves on
to the next when one cannot be reached, so losing an API replica costs a retry, not an
outage. Errors come back as Selkie's own (by their ``code``), so the proxy answers clients
exactly as it does in process. Access is cached as in process (1 s), and concurrent wakes
of one endpoint share one request.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from selkie.controlplane import Access, AccessCache, Activity, Backend, ControlPlane, PoolMember
from selkie.errors import ComputeError, NotFound, SelkieError, StoreError, error_class
from selkie.tasks import SharedTasks

log = logging.getLogger(__name__)


class HttpControlPlane(ControlPlane):
    def __init__(
        self,
        urls: list[str],
        token: str,
        *,
        timeout: float = 10.0,
        wake_timeout: float = 120.0,
        cache_ttl: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls or not token:
            raise ValueError("an HTTP control plane needs API URLs and the internal token")
        self.urls = [u.rstrip("/") for u in urls]
        self.token = token
        self.timeout = timeout
        self.wake_timeout = wake_timeout
        self._preferred = 0
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._cache = AccessCache(cache_ttl)
        self._waking: SharedTasks[Backend] = SharedTasks()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers={"Authorization": f"Bearer {self.token}"},
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                transport=self._transport,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _request(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> httpx.Response:
        """Send to the API replicas in turn until one answers; map its errors."""
        last: Exception | None = None
        n = len(self.urls)
        for i in range(n):
            index = (self._preferred + i) % n
            try:
                response = await self.client.request(
                    method, self.urls[index] + path, json=json, timeout=timeout or self.timeout
                )
            except httpx.TransportError as exc:
                log.warning("control plane %s unreachable: %r", self.urls[index], exc)
                last = exc
                continue
            self._preferred = index
            if response.status_code >= 400:
                raise _error(response)
            return response
        raise StoreError(f"no control plane reachable ({', '.join(self.urls)}): {last!r}")

    async def get_access(self, endpoint_id: str, role: str) -> Access | None:
        if not (_segment(endpoint_id) and _segment(role)):
            return None  # no endpoint or role is named so; do not let it rewrite the path
        return await self._cache.get(endpoint_id, role, lambda: self._access(endpoint_id, role))

    async def _access(self, endpoint_id: str, role: str) -> Access | None:
        try:
            r = await self._request(
                "GET", f"/internal/v1/endpoints/{_q(endpoint_id)}/roles/{_q(role)}/access"
            )
        except NotFound:
            return None
        return Access(**r.json())

    async def wake(self, endpoint_id: str) -> Backend:
        return await self._waking.run(endpoint_id, lambda: self._wake(endpoint_id))

    async def _wake(self, endpoint_id: str) -> Backend:
        if not _segment(endpoint_id):
            raise NotFound(f"endpoint {endpoint_id} not found")
        r = await self._request(
            "POST", f"/internal/v1/endpoints/{_q(endpoint_id)}/wake", timeout=self.wake_timeout
        )
        body = r.json()
        socket = Path(body["socket"]) if body.get("socket") else None
        return Backend(
            endpoint_id=body["endpoint_id"],
            host=body.get("host"),
            port=body.get("port"),
            # A unix socket is only of use on the compute's own machine.
            socket=socket if socket is not None and socket.exists() else None,
        )

    async def read_pool(self, branch_id: str) -> list[PoolMember]:
        if not _segment(branch_id):
            return []
        r = await self._request("GET", f"/internal/v1/branches/{_q(branch_id)}/read_pool")
        return [PoolMember(**m) for m in r.json()["members"]]

    async def compute_running(self, endpoint_id: str) -> bool:
        if not _segment(endpoint_id):
            return False
        r = await self._request("GET", f"/internal/v1/endpoints/{_q(endpoint_id)}/running")
        return bool(r.json()["running"])

    async def report_activity(self, activity: list[Activity]) -> None:
        await self._request(
            "POST",
            "/internal/v1/activity",
            json={"activity": [_activity(a) for a in activity]},
        )


def _segment(part: str) -> bool:
    return bool(part) and "/" not in part and part not in (".", "..")


def _q(part: str) -> str:
    """A path segment, whatever a client typed as its user name."""
    return quote(part, safe="")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _activity(a: Activity) -> dict[str, Any]:
    return {
        "endpoint_id": a.endpoint_id,
        "sessions": a.sessions,
        "last_active": _iso(a.last_active),
        "bytes_to_clients": a.bytes_to_clients,
        "bytes_from_clients": a.bytes_from_clients,
        "statements": a.statements,
        "source": a.source,
        "source_started": _iso(a.source_started),
    }


def _error(response: httpx.Response) -> SelkieError:
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "", f"control plane answered HTTP {response.status_code}"
    cls = error_class(code)
    if cls is None or cls is SelkieError:
        return ComputeError(message) if response.status_code >= 500 else SelkieError(message)
    return cls(message)
