"""The proxy with PyMySQL: authenticate first, wake, relay."""

from __future__ import annotations

import asyncio

import pymysql
import pytest

from tests.proxy.conftest import Db
from tests.proxy.test_clients import pymysql_conn


def query(db: Db, sql: str, **kw):  # type: ignore[no-untyped-def]
    conn = pymysql_conn(db, **kw)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


async def test_first_connection_wakes_the_endpoint(db: Db) -> None:
    assert db.state() == "init"
    rows = await asyncio.to_thread(query, db, "SELECT CURRENT_USER(), DATABASE(), 1+1")
    assert rows == ((f"{db.role}@localhost", db.database, 2),)
    assert db.state() == "active"


async def test_wrong_password_is_1045_and_does_not_wake(db: Db) -> None:
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, password="wrong")
    assert err.value.args[0] == 1045
    assert "Access denied for user" in err.value.args[1]
    assert db.state() == "init"
    assert not (await db.platform.driver.inspect(db.endpoint_id)).running
