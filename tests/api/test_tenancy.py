"""Authentication and tenancy, walked over every /v1 route of the app: without a key every
route answers 401; with another organization's key every object is invisible (404) and
nothing is changed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selkie.api.app import create_app
from selkie.config import load_settings
from selkie.control import Control
from selkie.control.bootstrap import local_principal
from selkie.store import Store
from tests.conftest import Tenant, make_tenant

BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/projects"): {"project": {"name": "intruder"}},
    ("PATCH", "/v1/projects/{project_id}"): {"project": {"name": "hijacked"}},
    ("POST", "/v1/projects/{project_id}/branches"): {"branch": {"name": "intruder"}},
    ("PATCH", "/v1/projects/{project_id}/branches/{branch_id}"): {"branch": {"name": "hijacked"}},
    ("POST", "/v1/projects/{project_id}/endpoints"): {"endpoint": {"branch_id": "{branch_id}"}},
    ("PATCH", "/v1/projects/{project_id}/endpoints/{endpoint_id}"): {
        "endpoint": {"suspend_timeout_seconds": 5}
    },
    ("POST", "/v1/projects/{project_id}/branches/{branch_id}/roles"): {
        "role": {"name": "intruder"}
    },
    ("POST", "/v1/projects/{project_id}/branches/{branch_id}/databases"): {
        "database": {"name": "intruder", "owner_name": "selkiedb_owner"}
    },
    ("POST", "/v1/projects/{project_id}/branches/{branch_id}/restore"): {
        "source_branch_id": "{branch_id}",
        "preserve_under_name": "intruder",
    },
    ("POST", "/v1/api_keys"): {"key_name": "intruder"},
    ("POST", "/v1/organizations"): {"organization": {"name": "intruder"}},
}
QUERIES: dict[str, dict[str, str]] = {
    "/v1/consumption_history/projects": {
        "from": "2020-01-01T00:00:00Z",
        "to": "2030-01-01T00:00:00Z",
        "granularity": "monthly",
    },
    "/v1/projects/{project_id}/branches/{branch_id}/compare_schema": {
        "base_branch_id": "br-any",
        "db_name": "selkiedb",
    },
    "/v1/projects/{project_id}/connection_uri": {
        "role_name": "selkiedb_owner",
        "database_name": "selkiedb",
    },
}


def v1_routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /v1, from its own OpenAPI document."""
    schema = create_app(None).openapi()  # type: ignore[arg-type] - no control needed for the schema
    return sorted(
        (method.upper(), path)
        for path, item in schema["paths"].items()
        if path.startswith("/v1/")
        for method in item
    )


ROUTES = v1_routes()


def _fill(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)


def _fill_body(body: Any, ids: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {k: _fill_body(v, ids) for k, v in body.items()}
    if isinstance(body, str):
        return _fill(body, ids)
    return body


def make_victim(other_tenant: Tenant) -> dict[str, str]:
    """An organization's full set of objects, whose ids the intruder knows."""
    c = other_tenant.client
    body = c.post("/v1/projects", json={"project": {"name": "victim"}}).json()
    pid = body["project"]["id"]
    ops = c.get(f"/v1/projects/{pid}/operations").json()["operations"]
    key = c.post("/v1/api_keys", json={"key_name": "victim-key"}).json()
    return {
        "project_id": pid,
        "branch_id": body["branch"]["id"],
        "endpoint_id": body["endpoints"][0]["id"],
        "role_name": body["roles"][0]["name"],
        "database_name": body["databases"][0]["name"],
        "operation_id": ops[0]["id"],
        "key_id": str(key["id"]),
        "org_id": other_tenant.org_id,
        "period": datetime.now(UTC).strftime("%Y-%m"),
    }


@pytest.fixture
def victim(other_tenant: Tenant) -> dict[str, str]:
    return make_victim(other_tenant)


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A client without a key and a victim's ids, shared by the 401 walk over every route:
    each of its requests is refused (every test asserts so), so none changes what the next
    one finds, and the walk makes one state store instead of one a route."""
    data = tmp_path_factory.mktemp("tenancy") / "data"
    settings = load_settings(environ={"SELKIE_DATA_DIR": str(data)})
    store = Store(settings.effective_database_url)
    control = Control.open(store, settings)
    ids = make_victim(make_tenant(control, local_principal(control), "other"))
    try:
        yield TestClient(create_app(control), raise_server_exceptions=False), ids
    finally:
        store.close()


def test_the_walk_covers_the_issue_routes() -> None:
    assert len(ROUTES) >= 30
    for expected in [
        ("GET", "/v1/projects/{project_id}/connection_uri"),
        ("POST", "/v1/projects/{project_id}/endpoints/{endpoint_id}/restart"),
        ("POST", "/v1/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reset_password"),
        ("DELETE", "/v1/api_keys/{key_id}"),
    ]:
        assert expected in ROUTES


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_key_is_401(walked: tuple[TestClient, dict[str, str]], method: str, path: str) -> None:
    anonymous, victim = walked
    url = _fill(path, victim)
    body = _fill_body(BODIES.get((method, path)), victim)
    for headers in (
        {},
        {"Authorization": "Bearer selkie_not-a-real-key"},
        {"Authorization": "Basic x"},
    ):
        r = anonymous.request(method, url, json=body, headers=headers, params=QUERIES.get(path))
        assert r.status_code == 401, (method, url, headers, r.text)
        assert r.json()["code"] == "unauthorized"


def _snapshot(owner: Tenant, ids: dict[str, str]) -> dict[str, Any]:
    c = owner.client
    pid, bid = ids["project_id"], ids["branch_id"]
    base = f"/v1/projects/{pid}/branches/{bid}"
    snap = {
        "project": c.get(f"/v1/projects/{pid}").json(),
        "branches": c.get(f"/v1/projects/{pid}/branches").json(),
        "endpoints": c.get(f"/v1/projects/{pid}/endpoints").json(),
        "roles": c.get(f"{base}/roles").json(),
        "databases": c.get(f"{base}/databases").json(),
        "operations": c.get(f"/v1/projects/{pid}/operations").json(),
        "keys": c.get("/v1/api_keys").json(),
    }
    for value in snap.values():
        assert "code" not in value, value
    return snap


def test_another_organization_sees_and_changes_nothing(
    tenant: Tenant, other_tenant: Tenant, victim: dict[str, str]
) -> None:
    before = _snapshot(other_tenant, victim)
    for method, path in ROUTES:
        url = _fill(path, victim)
        body = _fill_body(BODIES.get((method, path)), victim)
        r = tenant.client.request(method, url, json=body, params=QUERIES.get(path))
        if "{" not in path:
            # Collection routes without ids: allowed, but scoped to the caller's organization.
            assert r.status_code in (200, 201, 403), (method, path, r.text)
            text = r.text
            for secret_id in ("project_id", "branch_id", "endpoint_id", "org_id"):
                if method == "GET":
                    assert victim[secret_id] not in text, (method, path, secret_id)
            continue
        assert r.status_code == 404, (method, url, r.status_code, r.text)
        assert r.json()["code"] == "not_found"
    after = _snapshot(other_tenant, victim)
    assert after == before
    # What the intruder created on collection routes landed in its own organization.
    mine = tenant.client.get("/v1/projects").json()["projects"]
    assert {p["org_id"] for p in mine} == {tenant.org_id}
