"""Per-organization limits (projects, branches, endpoints, API keys: 429 naming the limit)
and the request rate limit per API key (429 with Retry-After; other keys unaffected)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from selkie.api.app import create_app
from selkie.api.ratelimit import RateLimiter
from selkie.config import load_settings
from selkie.control import Control
from selkie.control.bootstrap import local_principal
from selkie.errors import RateLimited
from selkie.store import Store


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Control]:
    settings = load_settings(
        environ={
            "SELKIE_DATA_DIR": str(tmp_path / "data"),
            "SELKIE_ORG_MAX_PROJECTS": "2",
            "SELKIE_ORG_MAX_BRANCHES": "3",
            "SELKIE_ORG_MAX_ENDPOINTS": "3",
            "SELKIE_ORG_MAX_API_KEYS": "2",
        }
    )
    store = Store(settings.effective_database_url)
    try:
        yield Control.open(store, settings)
    finally:
        store.close()


def client(control: Control, key: str, **kw: float) -> TestClient:
    c = TestClient(create_app(control, **kw), raise_server_exceptions=False)  # type: ignore[arg-type]
    c.headers["Authorization"] = f"Bearer {key}"
    return c


def test_organization_limits(limited: Control) -> None:
    admin = local_principal(limited)
    org = limited.organizations.create(admin, name="acme").id
    _, key = limited.api_keys.create(admin, name="k1", org_id=org)
    c = client(limited, key)
    first = c.post("/v1/projects", json={"project": {"name": "one"}})
    assert first.status_code == 201
    assert c.post("/v1/projects", json={"project": {"name": "two"}}).status_code == 201
    r = c.post("/v1/projects", json={"project": {"name": "three"}})
    assert r.status_code == 429 and "org_max_projects" in r.json()["message"]
    pid = first.json()["project"]["id"]
    # Two projects made two branches and two endpoints: one more of each, then the limit.
    branch = c.post(f"/v1/projects/{pid}/branches", json={"branch": {"name": "b"}})
    assert branch.status_code == 201, branch.text
    r = c.post(f"/v1/projects/{pid}/branches", json={"branch": {"name": "c"}})
    assert r.status_code == 429 and "org_max_branches" in r.json()["message"]
    bid = first.json()["branch"]["id"]
    assert c.post(
        f"/v1/projects/{pid}/endpoints", json={"endpoint": {"branch_id": bid}}
    ).status_code in (201, 409)
    keys = c.post("/v1/api_keys", json={"key_name": "k2"})
    assert keys.status_code in (200, 201), keys.text
    r = c.post("/v1/api_keys", json={"key_name": "k3"})
    assert r.status_code == 429 and "org_max_api_keys" in r.json()["message"]
    # Deleting makes room again.
    assert c.delete(f"/v1/projects/{first.json()['project']['id']}").status_code == 200
    assert c.post("/v1/projects", json={"project": {"name": "three"}}).status_code == 201


def test_rate_limit_per_key(control: Control) -> None:
    admin = local_principal(control)
    _, noisy = control.api_keys.create(admin, name="noisy")
    _, quiet = control.api_keys.create(admin, name="quiet")
    app = create_app(control, rate_limit=5)
    # The clock stands still: 30 requests take longer than refilling a token on a busy machine.
    app.state.rate_limiter = RateLimiter(5, clock=lambda: 1000.0)
    a = TestClient(app, headers={"Authorization": f"Bearer {noisy}"})
    b = TestClient(app, headers={"Authorization": f"Bearer {quiet}"})
    codes = [a.get("/v1/projects").status_code for _ in range(30)]
    assert codes == [200] * 10 + [429] * 20
    refused = a.get("/v1/projects")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["code"] == "rate_limited"
    assert b.get("/v1/projects").status_code == 200


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(2, burst=2, clock=lambda: now[0])
    limiter.take(1)
    limiter.take(1)
    with pytest.raises(RateLimited) as refused:
        limiter.take(1)
    assert refused.value.retry_after == pytest.approx(0.5)
    limiter.take(2)  # another key has its own bucket
    now[0] = 0.5
    limiter.take(1)


def test_ordinary_keys_neither_see_nor_revoke_admin_keys(control: Control) -> None:
    admin = local_principal(control)
    operator_key, _ = control.api_keys.create(admin, name="operator", admin=True)
    _, key = control.api_keys.create(admin, name="tenant")
    c = client(control, key)
    listed = c.get("/v1/api_keys").json()
    names = {k["name"] for k in listed["api_keys"]}
    assert "operator" not in names and "tenant" in names
    r = c.delete(f"/v1/api_keys/{operator_key.id}")
    assert r.status_code == 404
    # Still there for the operator.
    assert operator_key.id in {
        k.id for k in control.api_keys.list(admin, cursor=None, limit=100).items
    }
