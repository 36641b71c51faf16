"""SQL over HTTP believes X-Forwarded-* only from the reverse proxies the operator named
(SELKIE_PROXY_TRUSTED_PROXIES): a local client claiming `X-Forwarded-Proto: https` over
plain HTTP does not get past a project's require_tls (security review, issue 26 item 9)."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.proxy.conftest import Faked

pytestmark = pytest.mark.timeout(120)


async def test_a_forwarded_proto_header_is_not_tls(faked: Faked) -> None:
    faked.plane.add_role(faked.endpoint_id, faked.role, faked.password, require_tls=True)
    token = base64.b64encode(f"{faked.user}:{faked.password}".encode()).decode()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{faked.http_port}",
        headers={"Authorization": f"Basic {token}"},
        timeout=60,
    ) as c:
        plain = await c.post("/sql", json={"query": "SELECT 1"})
        claimed = await c.post(
            "/sql",
            json={"query": "SELECT 1"},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
        )
    assert plain.status_code == 403, plain.text
    assert claimed.status_code == 403, claimed.text
    assert "requires TLS" in claimed.text, claimed.text
    assert faked.plane.woken == []
