"""SQL over HTTP with PlanetScale's own driver (npm's @planetscale/database on the machine's
node): every type round-trips, parameters, interactive transactions committed and rolled
back, errors with MariaDB's code, a wake from suspended, and a wrong password refused (401)
without starting anything."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import need_service
from tests.proxy.conftest import Db

pytestmark = pytest.mark.timeout(180)
JS = Path(__file__).resolve().parent.parent / "js"


def node_client() -> None:
    if shutil.which("node") is None:
        need_service("node", "the database-js tests run npm's @planetscale/database on node")
    if not (JS / "node_modules" / "@planetscale" / "database").is_dir():
        need_service("@planetscale/database", "make setup installs it (npm install in tests/js)")


def url(db: Db, password: str | None = None) -> str:
    assert db.platform.proxy is not None and db.platform.proxy.http is not None
    secret = quote(password if password is not None else db.password, safe="")
    return f"http://{quote(db.user, safe='')}:{secret}@127.0.0.1:{db.platform.proxy.http.port}"


def drive(db: Db, scenario: str) -> dict[str, Any]:
    return node(db, "psdb.mjs", scenario)


def node(db: Db, script: str, *args: str) -> dict[str, Any]:
    """Run one of tests/js's scripts against the endpoint; what it printed, as JSON."""
    done = subprocess.run(
        ["node", str(JS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SELKIE_HTTP_URL": url(db)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_every_type_round_trips(db: Db) -> None:
    node_client()
    assert db.state() == "init"  # the first request wakes the endpoint
    got = await asyncio.to_thread(drive, db, "types")
    assert got["inserted"] == {"rowsAffected": 1}
    assert got["types"] == {
        "id": "INT32",
        "big": "UINT64",
        "dec30": "DECIMAL",
        "dbl": "FLOAT64",
        "d": "DATE",
        "dt": "DATETIME",
        "ts": "TIMESTAMP",
        "t": "TIME",
        "j": "TEXT",  # MariaDB's JSON is LONGTEXT with a check
        "s": "VARCHAR",
        "b": "BLOB",
        "n": "INT32",
    }
    assert got["row"] == {
        "id": 1,
        "big": "18446744073709551615",
        "dec30": "12345678901234567890.0123456789",
        "dbl": 2.5,
        "d": "2026-12-01",
        "dt": "2026-12-01 14:02:03.123456",
        "ts": "2026-12-01 14:02:03",
        "t": "838:59:59",
        "j": '{"a": [1, null]}',
        "s": "héllo 🦭",
        "b": [0, 255, 0, 0],
        "n": None,
    }
    assert got["insertId"] == "2"


async def test_transactions_span_requests(db: Db) -> None:
    node_client()
    got = await asyncio.to_thread(drive, db, "transactions")
    assert got["rolledBack"]["message"] == "changed my mind"
    # COUNT is BIGINT and SUM DECIMAL: the driver keeps both as exact strings.
    assert got["count"] == {"n": "2", "total": "30"}
    assert db.platform.proxy is not None and db.platform.proxy.http is not None
    assert db.platform.proxy.http.sessions.pinned == {}  # nothing left held


async def test_errors_carry_mariadbs_code(db: Db) -> None:
    node_client()
    got = await asyncio.to_thread(drive, db, "error")
    error = got["error"]
    assert error["name"] == "DatabaseError" and error["status"] == 400
    assert "errno 1146" in error["message"] and "sqlstate 42S02" in error["message"]
    assert error["body"]["code"] == "1146"


async def test_a_suspended_endpoint_wakes_and_a_wrong_password_wakes_nothing(db: Db) -> None:
    node_client()
    assert (await asyncio.to_thread(drive, db, "select1")) == {"answer": 42}
    await db.platform.lifecycle.suspend(db.endpoint_id)
    assert (await asyncio.to_thread(drive, db, "select1")) == {"answer": 42}
    assert db.state() == "active"
    await db.platform.lifecycle.suspend(db.endpoint_id)
    assert db.platform.proxy is not None and db.platform.proxy.http is not None
    port = db.platform.proxy.http.port
    wrong = base64.b64encode(f"{db.user}:wrong".encode()).decode()
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"http://127.0.0.1:{port}/psdb.v1alpha1.Database/Execute",
            json={"query": "SELECT 1"},
            headers={"Authorization": f"Basic {wrong}"},
        )
    assert r.status_code == 401 and "Access denied" in r.json()["error"]["message"]
    assert db.state() == "suspended"


def drizzle(db: Db) -> dict[str, Any]:
    if not (JS / "node_modules" / "drizzle-orm").is_dir():
        need_service("drizzle-orm", "make setup installs it (npm ci in tests/js)")
    return node(db, "drizzle.mjs")


async def test_drizzle_orm_through_its_planetscale_driver(db: Db) -> None:
    node_client()
    got = await asyncio.to_thread(drizzle, db)
    assert got["all"] == [
        {"id": 1, "name": "seal", "price": "9.99"},
        {"id": 2, "name": "selkie", "price": "12.50"},
    ]
    assert got["one"] == [{"name": "selkie"}]
