"""Neon's branch API beyond create/list/delete: protected branches (no delete, no restore
over them: 409), set_as_default, a branch with children refused with their names, the
branch object's fields, and compare_schema (a unified diff of two branches' schemas, with
real computes)."""

from __future__ import annotations

import asyncio

from selkie.control.bootstrap import local_principal
from selkie.platform import Platform
from tests.conftest import Tenant
from tests.control.history.conftest import finished, sql, start, started_project


def test_protected_default_and_children(tenant: Tenant) -> None:
    c = tenant.client
    body = c.post("/v1/projects", json={"project": {"name": "branches"}}).json()
    pid, main = body["project"]["id"], body["branch"]["id"]
    dev = c.post(f"/v1/projects/{pid}/branches", json={"branch": {"name": "dev"}}).json()
    dev_id = dev["branch"]["id"]
    branch = c.get(f"/v1/projects/{pid}/branches/{dev_id}").json()["branch"]
    for field in (
        "parent_id",
        "parent_lsn",
        "parent_timestamp",
        "current_state",
        "default",
        "protected",
        "created_at",
        "logical_size",
    ):
        assert field in branch, field
    assert branch["parent_id"] == main and branch["protected"] is False
    # Protected: neither deleted nor restored over.
    r = c.patch(f"/v1/projects/{pid}/branches/{dev_id}", json={"branch": {"protected": True}})
    assert r.status_code == 200 and r.json()["branch"]["protected"] is True
    r = c.delete(f"/v1/projects/{pid}/branches/{dev_id}")
    assert r.status_code == 409 and "protected" in r.json()["message"]
    r = c.post(f"/v1/projects/{pid}/branches/{dev_id}/restore", json={"source_branch_id": main})
    assert r.status_code == 409 and "protected" in r.json()["message"]
    c.patch(f"/v1/projects/{pid}/branches/{dev_id}", json={"branch": {"protected": False}})
    # A branch with children names them.
    child = c.post(
        f"/v1/projects/{pid}/branches", json={"branch": {"name": "feature", "parent_id": dev_id}}
    ).json()["branch"]["id"]
    r = c.delete(f"/v1/projects/{pid}/branches/{dev_id}")
    assert r.status_code == 409 and child in r.json()["message"]
    # set_as_default moves the default; the old default can then be deleted... once its
    # children are gone.
    r = c.post(f"/v1/projects/{pid}/branches/{dev_id}/set_as_default")
    assert r.status_code == 200 and r.json()["branch"]["default"] is True
    listed = c.get(f"/v1/projects/{pid}/branches").json()["branches"]
    assert [b["id"] for b in listed if b["default"]] == [dev_id]
    assert c.delete(f"/v1/projects/{pid}/branches/{child}").status_code == 200
    r = c.delete(f"/v1/projects/{pid}/branches/{dev_id}")
    assert r.status_code == 409 and "default" in r.json()["message"]


def test_compare_schema_route_is_scoped(tenant: Tenant, other_tenant: Tenant) -> None:
    body = tenant.client.post("/v1/projects", json={"project": {"name": "s"}}).json()
    pid, main = body["project"]["id"], body["branch"]["id"]
    url = f"/v1/projects/{pid}/branches/{main}/compare_schema"
    params = {"base_branch_id": main, "db_name": "selkiedb"}
    assert other_tenant.client.get(url, params=params).status_code == 404
    # Without computes in this process (an API built on the store alone): a clear 409.
    r = tenant.client.get(url, params=params)
    assert r.status_code == 409 and "compared" in r.json()["message"]
    bad = tenant.client.get(url, params={"base_branch_id": main, "db_name": "x;drop"})
    assert bad.status_code == 422


async def test_schema_diff_of_two_branches(platform: Platform) -> None:
    who = local_principal(platform.control)
    created = await started_project(
        platform,
        who,
        "schemas",
        "CREATE TABLE t1 (id INT PRIMARY KEY)",
        "INSERT INTO t1 VALUES (1)",
    )
    pid = created.project.id
    child = await asyncio.to_thread(
        platform.control.branches.create, who, pid, name="next", endpoints=[{"type": "read_write"}]
    )
    await finished(platform, who, pid, [o.id for o in child.operations])
    cep = child.endpoints[0].id
    await start(platform, who, pid, cep)
    await asyncio.to_thread(
        sql,
        platform,
        cep,
        created,
        "ALTER TABLE t1 ADD COLUMN extra VARCHAR(10)",
        "CREATE TABLE t2 (k INT)",
        "CREATE VIEW v AS SELECT id FROM t1",
        "INSERT INTO t1 (id) VALUES (2), (3)",  # data is not schema
    )
    db = created.databases[0].name
    diff = await platform.compare_schema(created.branch.id, child.branch.id, db)
    assert diff.startswith(f"--- {created.branch.id}\n+++ {child.branch.id}\n")
    added = [
        line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")
    ]
    assert any("`extra` varchar(10)" in line for line in added)
    assert any("CREATE TABLE `t2`" in line for line in added)
    assert any("VIEW `selkiedb`.`v` AS select" in line for line in added), diff
    assert "AUTO_INCREMENT" not in diff
    assert await platform.compare_schema(child.branch.id, child.branch.id, db) == ""
