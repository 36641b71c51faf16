"""The SQL editor's statements, run through Selkie's SQL over HTTP (the proxy's ``/sql``):
the same path as any client, so the endpoint wakes, the role's password is checked and the
statement is metered. The password comes with the form and is not kept."""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

TIMEOUT = 60.0
MAX_ROWS = 1000


@dataclass
class SqlResult:
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    error: str | None = None


def _verification(sql_url: str, ca: str | None) -> bool | ssl.SSLContext | None:
    """How the editor's request is protected, or None when it must not be sent: the form
    carries a role's password. On loopback nothing leaves the machine (the proxy's own
    certificate is not checked); anywhere else only over TLS whose certificate is checked
    (the proxy's own, else the system's CAs)."""
    parts = urlsplit(sql_url)
    host = (parts.hostname or "").lower()
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if loopback:
        return False
    if parts.scheme != "https":
        return None
    return ssl.create_default_context(cafile=ca) if ca else True


async def run_sql(
    sql_url: str | None,
    form: dict[str, str],
    *,
    ca: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SqlResult:
    if not sql_url:
        return SqlResult(error="SQL over HTTP is not enabled on this platform (SELKIE_HTTP_LISTEN)")
    verify = _verification(sql_url, ca)
    if verify is None:
        return SqlResult(
            error="the SQL editor sends a role's password only over loopback or verified TLS; "
            "serve SQL over HTTP with TLS (SELKIE_PROXY_TLS_CERT) or on loopback"
        )
    query = form.get("query", "").strip()
    if not query:
        return SqlResult(error="write a statement first")
    user = quote(f"{form.get('endpoint_id', '')}.{form.get('role', '')}", safe="")
    password = quote(form.get("password", ""), safe="")
    database = quote(form.get("database", ""), safe="")
    headers = {
        "Selkie-Connection-String": f"mysql://{user}:{password}@localhost/{database}",
        "Selkie-Array-Mode": "true",
    }
    body: dict[str, Any] = {"query": query}
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT, verify=verify, transport=transport) as client:
            reply = await client.post(f"{sql_url}/sql", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return SqlResult(error=f"could not reach SQL over HTTP: {type(exc).__name__}")
    try:
        answer = reply.json()
    except ValueError:
        return SqlResult(error=f"SQL over HTTP answered {reply.status_code}")
    if reply.status_code != 200:
        error = answer.get("error", answer) if isinstance(answer, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        return SqlResult(error=str(message or f"HTTP {reply.status_code}"))
    rows = answer.get("rows", [])
    return SqlResult(
        columns=[f["name"] for f in answer.get("fields", [])],
        rows=rows[:MAX_ROWS],
        row_count=int(answer.get("rowCount") or 0),
        truncated=len(rows) > MAX_ROWS,
    )
