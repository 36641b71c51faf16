"""Account sync never deletes what the store merely does not know: a database and a user
missing from a stale store survive the next sync; what was deleted through the API is
dropped, and a name created again is not. Real computes."""

from __future__ import annotations

import asyncio

from sqlalchemy import delete

from selkie.model import Principal
from selkie.platform import Platform
from selkie.store.tables import DatabaseRow, RoleRow
from tests.control.test_features import started


async def names(platform: Platform, ep: str) -> tuple[set[str], set[str]]:
    users, dbs = await platform.driver.execute(
        ep, ["SELECT DISTINCT User FROM mysql.user", "SHOW DATABASES"]
    )
    return {str(r[0]) for r in users}, {str(r[0]) for r in dbs}


async def test_a_stale_store_deletes_nothing(platform: Platform, who: Principal) -> None:
    created = await started(platform, who, "stale")
    pid, bid, ep = created.project.id, created.branch.id, created.endpoints[0].id
    ctl = platform.control
    await asyncio.to_thread(ctl.roles.create, who, pid, bid, name="kept_role")
    await asyncio.to_thread(
        ctl.databases.create, who, pid, bid, name="kept_db", owner_name="kept_role"
    )
    await asyncio.to_thread(ctl.roles.create, who, pid, bid, name="gone_role")
    await asyncio.to_thread(
        ctl.databases.create, who, pid, bid, name="gone_db", owner_name="gone_role"
    )
    await platform.runner.wait_idle()
    users, dbs = await names(platform, ep)
    assert {"kept_role", "gone_role"} <= users and {"kept_db", "gone_db"} <= dbs
    # The store loses the rows of one pair without a delete through the API (a restore of
    # an older backup, say) ...
    with platform.store.write() as s:
        s.execute(delete(DatabaseRow).where(DatabaseRow.name == "kept_db"))
        s.execute(delete(RoleRow).where(RoleRow.name == "kept_role"))
    # ... and the other pair is deleted through the API.
    await asyncio.to_thread(ctl.databases.delete, who, pid, bid, "gone_db")
    await asyncio.to_thread(ctl.roles.delete, who, pid, bid, "gone_role")
    await platform.runner.wait_idle()
    assert await platform.lifecycle.apply_config(ep)
    users, dbs = await names(platform, ep)
    assert "kept_db" in dbs and "kept_role" in users  # unknown to the store: left alone
    assert "gone_db" not in dbs and "gone_role" not in users  # deleted through the API
    # A name deleted and then created again exists again, and stays through a restart.
    await asyncio.to_thread(ctl.roles.create, who, pid, bid, name="gone_role")
    await asyncio.to_thread(
        ctl.databases.create, who, pid, bid, name="gone_db", owner_name="gone_role"
    )
    await platform.runner.wait_idle()
    await platform.lifecycle.suspend(ep)
    await platform.lifecycle.start(ep)
    users, dbs = await names(platform, ep)
    assert "gone_db" in dbs and "gone_role" in users


async def test_role_accounts_only_for_the_proxys_hosts(platform: Platform, who: Principal) -> None:
    created = await started(platform, who, "hosts")
    ep, role = created.endpoints[0].id, created.roles[0].name
    (rows,) = await platform.driver.execute(
        ep, [f"SELECT Host FROM mysql.user WHERE User = '{role}' ORDER BY Host"]
    )
    # Computes listen on loopback: the role logs in from this machine only (the proxy).
    assert sorted(str(r[0]) for r in rows) == ["127.0.0.1", "::1", "localhost"]
