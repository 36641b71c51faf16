"""The console's SQL editor sends a role's password with each statement: only over loopback
or TLS whose certificate is checked, never in clear across a network (security review,
issue 26 item 13). The transport is httpx's own mock: these test the caller's rule, not
SQL over HTTP (tests/proxy/test_http_sql.py does that against the real listener)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from selkie.api.console.sql import _verification, run_sql
from selkie.proxy.tls import make_self_signed

FORM = {"endpoint_id": "ep-x", "role": "owner", "password": "secret", "query": "SELECT 1"}


def answering(sent: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"fields": [{"name": "1"}], "rows": [[1]], "rowCount": 1})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    "url", ["http://10.20.30.40:8081", "http://sql.example.internal:8081", "http://[fd00::1]:8081"]
)
async def test_plain_http_off_loopback_is_refused_before_sending(url: str) -> None:
    sent: list[httpx.Request] = []
    result = await run_sql(url, FORM, transport=answering(sent))
    assert sent == []
    assert result.error is not None and "loopback or verified TLS" in result.error


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8081", "http://localhost:8081", "http://[::1]:8081"]
)
async def test_loopback_is_served(url: str) -> None:
    sent: list[httpx.Request] = []
    result = await run_sql(url, FORM, transport=answering(sent))
    assert result.error is None and result.rows == [[1]]
    assert len(sent) == 1


def test_tls_off_loopback_is_verified(tmp_path: Path) -> None:
    assert _verification("https://sql.example.internal:8081", None) is True
    assert _verification("http://127.0.0.1:8081", None) is False
    assert _verification("http://10.20.30.40:8081", None) is None
    # The in-process listener's own (self-signed) certificate is what is trusted.
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", domain="selkie.test")
    context = _verification("https://10.20.30.40:8081", str(tmp_path / "c.pem"))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
