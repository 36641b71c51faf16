"""The REST API end to end through FastAPI (real store, real services): resources, validation,
error shapes, pagination."""

from __future__ import annotations

from typing import Any

import pytest

from selkie.control import Control
from selkie.model import Principal, mysql_native_hash
from selkie.store.tables import RoleRow
from tests.conftest import Tenant


def _project(t: Tenant, **spec: Any) -> dict[str, Any]:
    r = t.client.post("/v1/projects", json={"project": spec})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def test_healthz_needs_no_key(anonymous) -> None:  # type: ignore[no-untyped-def]
    r = anonymous.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert "version" not in r.json()
    assert anonymous.get("/openapi.json").status_code == 200
    assert anonymous.get("/docs").status_code == 200


def test_create_project_answers_everything_neon_does(tenant: Tenant, control) -> None:  # type: ignore[no-untyped-def]
    body = _project(tenant, name="shop")
    assert set(body) == {
        "project",
        "branch",
        "endpoints",
        "roles",
        "databases",
        "operations",
        "connection_uris",
    }
    project, branch = body["project"], body["branch"]
    assert project["name"] == "shop" and project["org_id"] == tenant.org_id
    assert branch["name"] == "main" and branch["default"] is True
    (ep,) = body["endpoints"]
    assert ep["id"].startswith("ep-") and ep["type"] == "read_write"
    assert ep["current_state"] == "init" and ep["suspend_timeout_seconds"] == 300
    (role,) = body["roles"]
    (db,) = body["databases"]
    assert db["owner_name"] == role["name"]
    password = role["password"]
    assert len(password) >= 20
    uri = body["connection_uris"][0]["connection_uri"]
    assert uri == f"mysql://{ep['id']}.{role['name']}:{password}@127.0.0.1:6033/{db['name']}"
    assert [op["action"] for op in body["operations"]] == ["create_timeline"]
    # The password is stored only as MariaDB's hash, and never shown again.
    with control.store.read() as s:
        row = s.query(RoleRow).filter_by(branch_id=branch["id"], name=role["name"]).one()
        assert row.password_hash == mysql_native_hash(password)
        assert password not in row.password_hash
    got = tenant.client.get(f"/v1/projects/{project['id']}/branches/{branch['id']}/roles").json()
    assert "password" not in got["roles"][0] or got["roles"][0]["password"] is None


def test_project_crud(tenant: Tenant) -> None:
    c = tenant.client
    pid = _project(tenant, name="a")["project"]["id"]
    assert c.get(f"/v1/projects/{pid}").json()["project"]["name"] == "a"
    r = c.patch(
        f"/v1/projects/{pid}",
        json={
            "project": {"name": "b", "default_endpoint_settings": {"suspend_timeout_seconds": 60}}
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["project"]["default_endpoint_settings"]["suspend_timeout_seconds"] == 60
    assert r.json()["operations"] == []  # nothing for the computes to apply
    assert [p["id"] for p in c.get("/v1/projects").json()["projects"]] == [pid]
    r = c.delete(f"/v1/projects/{pid}")
    assert r.status_code == 200
    assert r.json()["operations"][0]["action"] == "delete_project"
    assert c.get(f"/v1/projects/{pid}").status_code == 404
    assert c.get("/v1/projects").json()["projects"] == []
    assert c.delete(f"/v1/projects/{pid}").status_code == 404


def test_branches_copy_roles_and_databases(tenant: Tenant) -> None:
    c = tenant.client
    body = _project(tenant)
    pid, main = body["project"]["id"], body["branch"]["id"]
    r = c.post(
        f"/v1/projects/{pid}/branches",
        json={"branch": {"name": "dev"}, "endpoints": [{"type": "read_write"}]},
    )
    assert r.status_code == 201, r.text
    dev = r.json()
    assert dev["branch"]["parent_id"] == main
    assert [x["name"] for x in dev["roles"]] == [body["roles"][0]["name"]]
    assert [x["name"] for x in dev["databases"]] == [body["databases"][0]["name"]]
    assert len(dev["endpoints"]) == 1
    # Duplicate names conflict; renaming works; the default branch cannot be deleted.
    dup = c.post(f"/v1/projects/{pid}/branches", json={"branch": {"name": "dev"}})
    assert dup.status_code == 409 and dup.json()["code"] == "conflict"
    bid = dev["branch"]["id"]
    assert (
        c.patch(f"/v1/projects/{pid}/branches/{bid}", json={"branch": {"name": "dev2"}}).json()[
            "branch"
        ]["name"]
        == "dev2"
    )
    assert c.delete(f"/v1/projects/{pid}/branches/{main}").status_code == 409
    # A branch with a child cannot be deleted before its child.
    child = c.post(f"/v1/projects/{pid}/branches", json={"branch": {"parent_id": bid}}).json()
    assert c.delete(f"/v1/projects/{pid}/branches/{bid}").status_code == 409
    assert c.delete(f"/v1/projects/{pid}/branches/{child['branch']['id']}").status_code == 200
    r = c.delete(f"/v1/projects/{pid}/branches/{bid}")
    assert r.status_code == 200
    assert r.json()["operations"][0]["payload"]["endpoint_ids"] == [dev["endpoints"][0]["id"]]
    assert c.get(f"/v1/projects/{pid}/endpoints/{dev['endpoints'][0]['id']}").status_code == 404
    # The name of a deleted branch is free again.
    again = c.post(f"/v1/projects/{pid}/branches", json={"branch": {"name": "dev2"}})
    assert again.status_code == 201


def test_endpoints(tenant: Tenant) -> None:
    c = tenant.client
    body = _project(tenant)
    pid, main = body["project"]["id"], body["branch"]["id"]
    ep = body["endpoints"][0]["id"]
    # One read_write endpoint per branch.
    r = c.post(f"/v1/projects/{pid}/endpoints", json={"endpoint": {"branch_id": main}})
    assert r.status_code == 409
    r = c.patch(
        f"/v1/projects/{pid}/endpoints/{ep}",
        json={
            "endpoint": {
                "autoscaling_limit_max_cu": 2,
                "suspend_timeout_seconds": -1,
                "pooler_enabled": True,
                "pooler_mode": "session",
            }
        },
    )
    assert r.status_code == 200, r.text
    got = r.json()["endpoint"]
    assert (got["autoscaling_limit_max_cu"], got["suspend_timeout_seconds"]) == (2.0, -1)
    assert (got["pooler_enabled"], got["pooler_mode"]) == (True, "session")
    for action, pending in (("start", "active"), ("suspend", "suspended"), ("restart", "active")):
        r = c.post(f"/v1/projects/{pid}/endpoints/{ep}/{action}")
        assert r.status_code == 200, r.text
        assert r.json()["endpoint"]["pending_state"] == pending
        assert r.json()["operations"][0]["action"] == f"{action}_compute"
    ops = c.get(f"/v1/projects/{pid}/operations").json()["operations"]
    assert [o["action"] for o in ops][-3:] == [
        "start_compute",
        "suspend_compute",
        "restart_compute",
    ]
    op = ops[-1]
    assert c.get(f"/v1/projects/{pid}/operations/{op['id']}").json()["operation"] == op
    # Disabled endpoints refuse to start.
    c.patch(f"/v1/projects/{pid}/endpoints/{ep}", json={"endpoint": {"disabled": True}})
    assert c.post(f"/v1/projects/{pid}/endpoints/{ep}/start").status_code == 409
    assert c.delete(f"/v1/projects/{pid}/endpoints/{ep}").status_code == 200
    assert c.get(f"/v1/projects/{pid}/endpoints").json()["endpoints"] == []
    r = c.post(f"/v1/projects/{pid}/endpoints", json={"endpoint": {"branch_id": main}})
    assert r.status_code == 201


def test_roles_and_databases(tenant: Tenant, control) -> None:  # type: ignore[no-untyped-def]
    c = tenant.client
    body = _project(tenant)
    pid, bid = body["project"]["id"], body["branch"]["id"]
    base = f"/v1/projects/{pid}/branches/{bid}"
    r = c.post(f"{base}/roles", json={"role": {"name": "app"}})
    assert r.status_code == 201, r.text
    first_pw = r.json()["role"]["password"]
    assert [o["action"] for o in r.json()["operations"]] == ["apply_config"]
    assert c.post(f"{base}/roles", json={"role": {"name": "app"}}).status_code == 409
    r = c.post(f"{base}/roles/app/reset_password")
    new_pw = r.json()["role"]["password"]
    assert new_pw and new_pw != first_pw
    with control.store.read() as s:
        row = s.query(RoleRow).filter_by(branch_id=bid, name="app").one()
        assert row.password_hash == mysql_native_hash(new_pw)
    r = c.post(f"{base}/databases", json={"database": {"name": "shop", "owner_name": "app"}})
    assert r.status_code == 201, r.text
    assert c.get(f"{base}/databases/shop").json()["database"]["owner_name"] == "app"
    assert {d["name"] for d in c.get(f"{base}/databases").json()["databases"]} == {
        "selkiedb",
        "shop",
    }
    # A role that owns databases cannot go; the owner must exist.
    assert c.delete(f"{base}/roles/app").status_code == 409
    bad_owner = c.post(f"{base}/databases", json={"database": {"name": "x", "owner_name": "ghost"}})
    assert bad_owner.status_code == 422
    assert c.delete(f"{base}/databases/shop").status_code == 200
    assert c.delete(f"{base}/roles/app").status_code == 200
    assert c.get(f"{base}/roles/app").status_code == 404
    uri = c.get(
        f"/v1/projects/{pid}/connection_uri",
        params={"role_name": "selkiedb_owner", "database_name": "selkiedb", "pooled": "true"},
    ).json()
    ep = body["endpoints"][0]["id"]
    assert uri["uri"] == f"mysql://{ep}-pooler.selkiedb_owner@127.0.0.1:6033/selkiedb"
    assert uri["password_included"] is False


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/projects", {"project": {"name": ""}}, "project.name"),
        ("/v1/projects", {"project": {"bogus": 1}}, "bogus"),
        (
            "/v1/projects",
            {"project": {"default_endpoint_settings": {"suspend_timeout_seconds": 0.5}}},
            "suspend_timeout_seconds",
        ),
        (
            "/v1/projects",
            {"project": {"default_endpoint_settings": {"suspend_timeout_seconds": 604801}}},
            "suspend_timeout_seconds",
        ),
        (
            "/v1/projects",
            {"project": {"default_endpoint_settings": {"suspend_timeout_seconds": -2}}},
            "suspend_timeout_seconds",
        ),
        (
            "/v1/projects",
            {"project": {"default_endpoint_settings": {"autoscaling_limit_min_cu": 0.3}}},
            "multiple of 0.25",
        ),
        (
            "/v1/projects",
            {"project": {"default_endpoint_settings": {"autoscaling_limit_max_cu": 9}}},
            "autoscaling_limit_max_cu",
        ),
        (
            "/v1/projects",
            {
                "project": {
                    "default_endpoint_settings": {
                        "autoscaling_limit_min_cu": 2,
                        "autoscaling_limit_max_cu": 1,
                    }
                }
            },
            "must not exceed",
        ),
        ("/v1/projects", {"project": {"branch": {"role_name": "bad-name"}}}, "role name"),
        ("/v1/projects", {"project": {"branch": {"role_name": "root"}}}, "reserved"),
        ("/v1/projects", {"project": {"branch": {"database_name": "mysql"}}}, "reserved"),
        ("/v1/projects", {"project": {"region_id": "mars"}}, "region_id"),
        (
            "/v1/projects",
            {"project": {"settings": {"storage_mode": "pageserver"}}},
            "page_server_address",
        ),
        ("/v1/projects", "not json", ""),
    ],
)
def test_invalid_input_is_422_with_a_message(
    tenant: Tenant, control: Control, admin: Principal, path: str, body: Any, fragment: str
) -> None:
    if "storage_mode" in str(body):
        # An operator setting: only an admin key gets as far as its validation.
        _, key = control.api_keys.create(admin, name="operator", admin=True)
        tenant.client.headers["Authorization"] = f"Bearer {key}"
    if isinstance(body, str):
        r = tenant.client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = tenant.client.post(path, json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["code"] == "invalid_input" and fragment in err["message"]


def test_name_length_and_charset(tenant: Tenant) -> None:
    body = _project(tenant)
    pid, bid = body["project"]["id"], body["branch"]["id"]
    base = f"/v1/projects/{pid}/branches/{bid}"
    for name in ("x" * 33, "1abc", "a b", "é"):
        r = tenant.client.post(f"{base}/roles", json={"role": {"name": name}})
        assert r.status_code == 422, (name, r.text)
    for name in ("x" * 65, "a-b", "information_schema"):
        r = tenant.client.post(
            f"{base}/databases", json={"database": {"name": name, "owner_name": "selkiedb_owner"}}
        )
        assert r.status_code == 422, (name, r.text)
    assert (
        tenant.client.post("/v1/projects", json={"project": {"name": "x" * 65}}).status_code == 422
    )


def test_pagination_over_http(tenant: Tenant) -> None:
    ids = {_project(tenant, name=f"p{i}")["project"]["id"] for i in range(5)}
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = tenant.client.get("/v1/projects", params=params).json()
        seen += [p["id"] for p in page["projects"]]
        cursor = page["pagination"]["cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids)
    assert tenant.client.get("/v1/projects", params={"cursor": "garbage"}).status_code == 422


def test_api_keys(tenant: Tenant, anonymous) -> None:  # type: ignore[no-untyped-def]
    c = tenant.client
    r = c.post("/v1/api_keys", json={"key_name": "ci"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["key"].startswith("selkie_") and new["org_id"] == tenant.org_id
    ok = anonymous.get("/v1/projects", headers={"Authorization": f"Bearer {new['key']}"})
    assert ok.status_code == 200
    names = {k["name"] for k in c.get("/v1/api_keys").json()["api_keys"]}
    assert "ci" in names
    assert all("key" not in k for k in c.get("/v1/api_keys").json()["api_keys"])
    # Ordinary keys cannot mint admin keys or organizations.
    assert c.post("/v1/api_keys", json={"key_name": "x", "admin": True}).status_code == 403
    assert c.post("/v1/organizations", json={"organization": {"name": "x"}}).status_code == 403
    assert c.delete(f"/v1/api_keys/{new['id']}").json()["api_keys"][0]["revoked"] is True
    gone = anonymous.get("/v1/projects", headers={"Authorization": f"Bearer {new['key']}"})
    assert gone.status_code == 401


def test_unknown_route_and_method_are_json(tenant: Tenant) -> None:
    r = tenant.client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = tenant.client.put("/v1/projects")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
