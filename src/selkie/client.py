"""A small HTTP client for Selkie's REST API, used by the CLI, tests and scripts.

Errors come back as Selkie's own exceptions, chosen by the ``code`` of the error body, so a
caller handles a 404 from the API exactly as a NotFound raised in-process.
"""

from __future__ import annotations

from typing import Any

import httpx

from selkie import errors

_BY_CODE: dict[str, type[errors.SelkieError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.Unauthorized,
        errors.Forbidden,
        errors.NotFound,
        errors.Conflict,
        errors.StateConflict,
        errors.QuotaExceeded,
        errors.StoreError,
        errors.ComputeError,
        errors.StorageError,
        errors.ArchiveError,
    )
}
_BY_STATUS: dict[int, type[errors.SelkieError]] = {
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    422: errors.InvalidInput,
    429: errors.QuotaExceeded,
}


class ApiError(errors.SelkieError):
    """An error answer whose code this client does not know."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code


class SelkieClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SelkieClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise errors.SelkieError(
                f"cannot reach the Selkie API at {self._http.base_url}: {exc}"
            ) from exc
        if resp.is_success:
            return resp.json()
        try:
            body = resp.json()
            code, message = str(body["code"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "error", resp.text[:500] or resp.reason_phrase
        cls = _BY_CODE.get(code) or _BY_STATUS.get(resp.status_code)
        if cls is not None:
            raise cls(message)
        raise ApiError(message, status=resp.status_code, code=code)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def list_all(self, path: str, key: str, **params: Any) -> list[Any]:
        """Follow the pagination cursors of a list route to its end."""
        items: list[Any] = []
        cursor = None
        while True:
            page = self.get(path, cursor=cursor, **params)
            items.extend(page[key])
            cursor = (page.get("pagination") or {}).get("cursor")
            if not cursor:
                return items
