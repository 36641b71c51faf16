"""A safekeeper in a process of its own (`selkie safekeeper`), asked over HTTP.

:class:`RemoteSafekeeper` is :class:`~selkie.safekeeper.api.SafekeeperApi` over the
safekeeper process's internal routes (:mod:`selkie.api.safekeeper`), authenticated by the
internal token. No password crosses: the safekeeper derives the compute account's from the
shared key. It cannot call back into the control plane, so the account is made on the
compute (``prepare``, idempotent) before each request to follow it. Transport failures and
timeouts become :class:`~selkie.errors.StorageError`; the process's own errors come back
as Selkie's (by their ``code``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from selkie.archive import segments
from selkie.archive.layout import TimelineRef
from selkie.archive.segments import Record, SegmentError
from selkie.errors import SelkieError, StorageError, error_class
from selkie.safekeeper.accounts import Credentials
from selkie.safekeeper.api import TimelineStatus
from selkie.safekeeper.client import Address

log = logging.getLogger(__name__)

PREFIX = "/internal/v1/safekeeper"
# Added to a request's own wait (catch-up, archiving) for the round trip.
_SLACK = 5.0


class RemoteSafekeeper:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url or not token:
            raise ValueError("a remote safekeeper needs its URL and the internal token")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._status: list[TimelineStatus] = []
        self.segments_shipped = 0
        self.bytes_shipped = 0

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self.token}"},
                transport=self._transport,
            )
        return self._client

    async def _request(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> httpx.Response:
        try:
            response = await self.client.request(
                method, PREFIX + path, json=json, timeout=timeout or self.timeout
            )
        except httpx.TimeoutException as exc:
            raise StorageError(f"the safekeeper at {self.url} did not answer in time") from exc
        except httpx.TransportError as exc:
            raise StorageError(f"the safekeeper at {self.url} is unreachable: {exc!r}") from exc
        if response.status_code >= 400:
            raise _error(response, self.url)
        return response

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to start here; a safekeeper that does not answer yet is logged, not
        fatal (the control plane retries its calls)."""
        try:
            await self.timelines()
        except SelkieError as exc:
            log.warning("safekeeper at %s: %s", self.url, exc.message)

    async def stop(self) -> None:
        """Close the connections; the safekeeper process goes on (its follows end with
        each compute's stop, which detaches first)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- following -------------------------------------------------------------------------

    async def attach(
        self,
        endpoint_id: str,
        ref: TimelineRef,
        address: Address,
        *,
        start_seq: int,
        semi_sync: bool = False,
        creds: Credentials | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # ``creds`` stay here: the safekeeper derives the same from the shared key.
        if isinstance(address, Path):
            raise StorageError(
                f"a remote safekeeper cannot reach {endpoint_id}'s unix socket; "
                "set SELKIE_SAFEKEEPER_FOLLOW=tcp"
            )
        if prepare is not None:
            await prepare()
        host, port = address
        await self._request(
            "POST",
            f"/follows/{_q(endpoint_id)}",
            json={
                "project_id": ref.project_id,
                "timeline_id": ref.timeline_id,
                "address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "start_seq": start_seq,
                "semi_sync": semi_sync,
            },
        )

    async def detach(self, endpoint_id: str) -> None:
        await self._request("DELETE", f"/follows/{_q(endpoint_id)}")

    async def catch_up(self, endpoint_id: str, seq: int, timeout: float) -> bool:
        r = await self._request(
            "POST",
            f"/follows/{_q(endpoint_id)}/catch_up",
            json={"seq": seq, "timeout": timeout},
            timeout=timeout + _SLACK,
        )
        return bool(r.json()["done"])

    async def drain(self, ref: TimelineRef, datadir: Path | None) -> int:
        # The stopped compute's files are not the safekeeper's to read: the catch-up
        # before the stop took everything from the stream; this closes the open segment.
        r = await self._request("POST", _timeline(ref) + "/close")
        return int(r.json()["last_seq"])

    # --- the archive and the local log -----------------------------------------------------

    async def archived_position(self, ref: TimelineRef) -> int:
        r = await self._request("GET", _timeline(ref) + "/archived")
        return int(r.json()["seq"])

    async def wait_archived(self, ref: TimelineRef, seq: int, timeout: float) -> bool:
        r = await self._request(
            "POST",
            _timeline(ref) + "/wait_archived",
            json={"seq": seq, "timeout": timeout},
            timeout=timeout + _SLACK,
        )
        return bool(r.json()["done"])

    async def local_tail(self, ref: TimelineRef, after: int) -> tuple[bytes, list[Record]] | None:
        r = await self._request(
            "GET", _timeline(ref) + f"/tail?after={int(after)}", timeout=max(self.timeout, 60.0)
        )
        if r.status_code == 204 or not r.content:
            return None
        try:
            fde, records, _end = segments.decode(r.content, strict=True)
        except SegmentError as exc:
            raise StorageError(f"the safekeeper sent an unreadable tail: {exc}") from exc
        return fde, records

    async def appended_bytes(self, ref: TimelineRef) -> int:
        r = await self._request("GET", _timeline(ref) + "/appended_bytes")
        return int(r.json()["bytes"])

    # --- observation -----------------------------------------------------------------------

    async def timelines(self) -> list[TimelineStatus]:
        body = (await self._request("GET", "/status")).json()
        self._status = [TimelineStatus(**t) for t in body["timelines"]]
        self.segments_shipped = int(body["segments_shipped"])
        self.bytes_shipped = int(body["bytes_shipped"])
        return list(self._status)

    def status(self) -> list[TimelineStatus]:
        return list(self._status)


def _q(part: str) -> str:
    return quote(part, safe="")


def _timeline(ref: TimelineRef) -> str:
    return f"/projects/{_q(ref.project_id)}/timelines/{_q(ref.timeline_id)}"


def _error(response: httpx.Response, url: str) -> SelkieError:
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "", f"the safekeeper at {url} answered HTTP {response.status_code}"
    cls = error_class(code)
    if cls is None or cls is SelkieError:
        return StorageError(message)
    return cls(message)
