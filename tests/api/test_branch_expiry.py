"""Branches that expire (Neon's ``expires_at``): set on create or PATCH, refused where the
branch may not go (the default, a protected one, one with children), and at the time the
scheduler's leader deletes the branch and its endpoints: the compute process is gone, the
branch answers 404, and an ``expire_branch`` operation says so."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import pytest

from selkie.control.bootstrap import local_principal
from selkie.model import OperationAction, OperationStatus, utcnow
from selkie.platform import Platform
from tests.conftest import Tenant
from tests.control.history.conftest import finished, start


def _in(seconds: float) -> str:
    return (utcnow() + timedelta(seconds=seconds)).isoformat()


def test_expires_at_is_set_checked_and_cleared(tenant: Tenant) -> None:
    c = tenant.client
    body = c.post("/v1/projects", json={"project": {"name": "expiry"}}).json()
    pid, main = body["project"]["id"], body["branch"]["id"]
    url = f"/v1/projects/{pid}/branches"
    when = _in(3600)
    preview = c.post(url, json={"branch": {"name": "preview", "expires_at": when}})
    assert preview.status_code == 201, preview.text
    bid = preview.json()["branch"]["id"]
    got = c.get(f"{url}/{bid}").json()["branch"]
    assert got["expires_at"] is not None and got["expires_at"][:19] == when[:19]

    # A time that is not in the future, or without a timezone: 422 with the reason.
    for bad, words in ((_in(-60), "not in the future"), ("2030-01-01T00:00:00", "timezone")):
        r = c.post(url, json={"branch": {"name": "x", "expires_at": bad}})
        assert r.status_code == 422 and words in r.json()["message"], r.text
    # The default branch and a protected one cannot expire (422); a branch that expires
    # gets no children (409), and one with children cannot be made to expire (409).
    r = c.patch(f"{url}/{main}", json={"branch": {"expires_at": when}})
    assert r.status_code == 422 and "default" in r.json()["message"]
    r = c.patch(f"{url}/{bid}", json={"branch": {"protected": True}})
    assert r.status_code == 422 and "cannot expire" in r.json()["message"]
    r = c.post(url, json={"branch": {"name": "child", "parent_id": bid}})
    assert r.status_code == 409 and "expires" in r.json()["message"]
    r = c.post(f"{url}/{bid}/set_as_default")
    assert r.status_code == 422 and "expires" in r.json()["message"]
    dev = c.post(url, json={"branch": {"name": "dev"}}).json()["branch"]["id"]
    c.post(url, json={"branch": {"name": "feature", "parent_id": dev}})
    r = c.patch(f"{url}/{dev}", json={"branch": {"expires_at": when}})
    assert r.status_code == 409 and "child" in r.json()["message"]

    # A PATCH without the field leaves it; null clears it, and then protection is allowed.
    r = c.patch(f"{url}/{bid}", json={"branch": {"name": "preview-2"}})
    assert r.json()["branch"]["expires_at"] is not None
    r = c.patch(f"{url}/{bid}", json={"branch": {"expires_at": None}})
    assert r.status_code == 200 and r.json()["branch"]["expires_at"] is None
    r = c.patch(f"{url}/{bid}", json={"branch": {"protected": True}})
    assert r.status_code == 200


@pytest.mark.timeout(120)
async def test_the_leader_deletes_an_expired_branch_and_its_compute(platform: Platform) -> None:
    who = local_principal(platform.control)
    created = await asyncio.to_thread(platform.control.projects.create, who, name="expire")
    pid = created.project.id
    branch = await asyncio.to_thread(
        platform.control.branches.create,
        who,
        pid,
        name="preview",
        endpoints=[{"type": "read_write"}],
        expires_at=utcnow() + timedelta(seconds=4),
    )
    await finished(platform, who, pid, [o.id for o in branch.operations])
    ep = branch.endpoints[0].id
    await start(platform, who, pid, ep)
    compute_pid = (await platform.driver.inspect(ep)).pid
    assert compute_pid is not None
    os.kill(compute_pid, 0)  # running

    # The scheduler's leader, as it runs in `selkie up`, finds it due within seconds.
    deadline = asyncio.get_running_loop().time() + 60
    ops: list = []
    while asyncio.get_running_loop().time() < deadline:
        listed = await asyncio.to_thread(
            platform.control.operations.list, who, pid, cursor=None, limit=50
        )
        ops = [o for o in listed.items if o.action is OperationAction.EXPIRE_BRANCH]
        if ops and ops[0].status is OperationStatus.FINISHED:
            break
        await asyncio.sleep(0.5)
    assert [o.branch_id for o in ops] == [branch.branch.id]
    assert ops[0].status is OperationStatus.FINISHED, ops[0]
    with pytest.raises(ProcessLookupError):
        os.kill(compute_pid, 0)
    names = [
        b.name
        for b in (
            await asyncio.to_thread(platform.control.branches.list, who, pid, cursor=None, limit=50)
        ).items
    ]
    assert "preview" not in names
    r = await asyncio.to_thread(platform.control.endpoints.list, who, pid, cursor=None, limit=50)
    assert ep not in [e.id for e in r.items]


def test_what_waits_for_a_deleted_branch_is_cancelled_not_failed(tenant: Tenant) -> None:
    """A start queued for an endpoint whose branch is then deleted has nothing left to
    start: it is cancelled with the reason (no retries, no failure), and the deletion
    itself stays queued."""
    c = tenant.client
    body = c.post("/v1/projects", json={"project": {"name": "cancel"}}).json()
    pid = body["project"]["id"]
    made = c.post(
        f"/v1/projects/{pid}/branches",
        json={"branch": {"name": "dev"}, "endpoints": [{"type": "read_write"}]},
    ).json()
    bid, eid = made["branch"]["id"], made["endpoints"][0]["id"]
    start = c.post(f"/v1/projects/{pid}/endpoints/{eid}/start").json()["operations"][0]
    deleted = c.delete(f"/v1/projects/{pid}/branches/{bid}").json()["operations"][0]
    op = c.get(f"/v1/projects/{pid}/operations/{start['id']}").json()["operation"]
    assert op["status"] == "cancelled" and "deleted" in op["error"], op
    op = c.get(f"/v1/projects/{pid}/operations/{deleted['id']}").json()["operation"]
    assert op["status"] == "scheduling" and op["action"] == "delete_timeline", op
