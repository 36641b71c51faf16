"""What only the operator sets: a tenant's key cannot change a project's plan, quotas or
storage targets (403 with a message), an admin's can; addresses are host names or IPs (and
on the operator's allow-list when there is one); failures shown to tenants carry no remote
bodies, reprs or host paths; my.cnf never takes a control character."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from selkie.api.app import create_app
from selkie.compute.mariadb import Sizing, render_config
from selkie.control import Control
from selkie.control.operator_settings import check_host, check_url
from selkie.errors import ComputeError, InvalidInput, public_message
from selkie.model import Principal
from tests.conftest import Tenant

TENANT_CHANGES = [
    {"plan": "default"},
    {"max_cu": 8},
    {"max_active_endpoints": 100},
    {"compute_time_limit_seconds": 10**9},
    {"storage_limit_bytes": 10**15},
    {"storage_mode": "pageserver", "page_server_address": "10.0.0.1", "page_server_port": 80},
    {"page_server_address": "169.254.169.254"},
    {"page_server_port": 8080},
    {"safekeeper_url": "http://169.254.169.254/latest"},
]


@pytest.fixture
def admin_client(control: Control, admin: Principal) -> TestClient:
    _, key = control.api_keys.create(admin, name="operator-key", admin=True)
    client = TestClient(create_app(control), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {key}"
    return client


@pytest.mark.parametrize("change", TENANT_CHANGES)
def test_a_tenant_cannot_change_operator_settings(tenant: Tenant, change: dict) -> None:  # type: ignore[type-arg]
    c = tenant.client
    pid = c.post("/v1/projects", json={"project": {"name": "mine"}}).json()["project"]["id"]
    before = c.get(f"/v1/projects/{pid}").json()["project"]["settings"]
    r = c.patch(f"/v1/projects/{pid}", json={"project": {"settings": change}})
    assert r.status_code == 403, r.text
    assert "set by the operator" in r.json()["message"]
    assert c.get(f"/v1/projects/{pid}").json()["project"]["settings"] == before
    # Nor when creating a project.
    r = c.post("/v1/projects", json={"project": {"name": "lifted", "settings": change}})
    assert r.status_code == 403, r.text


def test_a_tenant_may_send_back_what_is_in_force(tenant: Tenant) -> None:
    c = tenant.client
    pid = c.post("/v1/projects", json={"project": {"name": "echo"}}).json()["project"]["id"]
    settings = c.get(f"/v1/projects/{pid}").json()["project"]["settings"]
    settings["durability"] = "sync"  # a tenant setting, beside the unchanged operator ones
    r = c.patch(f"/v1/projects/{pid}", json={"project": {"settings": settings}})
    assert r.status_code == 200, r.text
    assert r.json()["project"]["settings"]["durability"] == "sync"
    # Applied to the project's endpoint by an operation (live, were it running).
    assert [o["action"] for o in r.json()["operations"]] == ["apply_config"]


def test_an_admin_sets_them(admin_client: TestClient, tenant: Tenant) -> None:
    pid = tenant.client.post("/v1/projects", json={"project": {"name": "ops"}}).json()["project"][
        "id"
    ]
    r = admin_client.patch(
        f"/v1/projects/{pid}", json={"project": {"settings": {"max_cu": 2, "plan": "default"}}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["project"]["settings"]["max_cu"] == 2
    bad = admin_client.patch(
        f"/v1/projects/{pid}",
        json={"project": {"settings": {"page_server_address": "evil.example/#", "max_cu": 2}}},
    )
    assert bad.status_code == 422 and "host name or an IP address" in bad.json()["message"]


@pytest.mark.parametrize(
    "value",
    ["", "http://x", "a/b", "a#b", "a b", "a\nb", "host:80", "-bad", "a..b", "x" * 300, "a\x00"],
)
def test_addresses_are_hosts_only(value: str) -> None:
    with pytest.raises(InvalidInput):
        check_host("page_server_address", value)


def test_hosts_and_the_allow_list() -> None:
    assert check_host("h", "pageserver-0.pageserver.svc") == "pageserver-0.pageserver.svc"
    assert check_host("h", "10.1.2.3") == "10.1.2.3"
    assert check_host("h", "::1") == "::1"
    assert check_host("h", "PS.internal", ["ps.internal"]) == "PS.internal"
    with pytest.raises(InvalidInput, match="not one of the hosts"):
        check_host("h", "169.254.169.254", ["ps.internal"])
    assert check_url("s", "https://sk.internal:7676") == "https://sk.internal:7676"
    for url in (
        "ftp://sk",
        "http://user:pw@sk/",
        "http://sk/?q=1",
        "http://sk/#f",
        "http://sk /",
        "http://sk:99999/",
    ):
        with pytest.raises(InvalidInput):
            check_url("s", url)


def test_failures_shown_to_tenants_hold_no_internals() -> None:
    message = public_message(OSError(2, "No such file", "/srv/selkie/data/secret"))
    assert "/srv" not in message and "FileNotFoundError" in message and "log" in message
    assert public_message(ComputeError("compute x failed")) == "compute x failed"


def test_my_cnf_takes_no_control_characters() -> None:
    common = {
        "sizing": Sizing.for_cu(0.25),
        "datadir": Path("/d"),
        "socket": Path("/s"),
        "port": 1,
        "pid_file": Path("/p"),
        "error_log": None,
    }
    for extra in ({"innodb_page_server_address": "a\ninit_file=/tmp/x"}, {"x\ry": "1"}):
        with pytest.raises(ComputeError, match="control character"):
            render_config(**common, extra=extra)  # type: ignore[arg-type]
    assert "innodb_page_server_address=ps" in render_config(
        **common,  # type: ignore[arg-type]
        extra={"innodb_page_server_address": "ps"},
    )


def test_request_bodies_are_limited_before_parsing(tenant: Tenant) -> None:
    huge = b'{"project": {"name": "' + b"x" * (2 << 20) + b'"}}'
    r = tenant.client.post(
        "/v1/projects", content=huge, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"project": {"name": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    r = tenant.client.post(
        "/v1/projects", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    # Without a key as well: the limit comes before authentication.
    r = TestClient(tenant.client.app).post("/v1/projects", content=huge)
    assert r.status_code == 413
    ok = tenant.client.post("/v1/projects", json={"project": {"name": "small"}})
    assert ok.status_code == 201, ok.text
