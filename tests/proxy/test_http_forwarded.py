"""SQL over HTTP believes X-Forwarded-* only from the reverse proxies the operator named
(SELKIE_PROXY_TRUSTED_PROXIES): a local client claiming `X-Forwarded-Proto: https` over
plain HTTP does not get past a project's require_tls (security review, issue 26 item 9)."""

from __future__ import annotations

import asyncio

import pytest

from selkie.control.bootstrap import local_principal
from tests.proxy.conftest import Db
from tests.proxy.test_http_sql import client

pytestmark = pytest.mark.timeout(120)


async def test_a_forwarded_proto_header_is_not_tls(db: Db) -> None:
    who = local_principal(db.platform.control)
    await asyncio.to_thread(
        db.platform.control.projects.update,
        who,
        db.created.project.id,
        settings={"require_tls": True},
    )
    await asyncio.sleep(1.2)  # the proxy caches a role's access for a second
    async with client(db) as c:
        plain = await c.post("/sql", json={"query": "SELECT 1"})
        claimed = await c.post(
            "/sql",
            json={"query": "SELECT 1"},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
        )
    assert plain.status_code == 403, plain.text
    assert claimed.status_code == 403, claimed.text
    assert "requires TLS" in claimed.text, claimed.text
