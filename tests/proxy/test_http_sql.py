"""Neon-style POST /sql from Python (httpx): parameters bound by the proxy (strings of any
bytes, NULL, numbers, JSON), array mode, a connection-string header, and a batch that fails
half-way leaves nothing."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.proxy.conftest import Db

pytestmark = pytest.mark.timeout(120)


def client(db: Db) -> httpx.AsyncClient:
    assert db.platform.proxy is not None and db.platform.proxy.http is not None
    token = base64.b64encode(f"{db.user}:{db.password}".encode()).decode()
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{db.platform.proxy.http.port}",
        headers={"Authorization": f"Basic {token}"},
        timeout=60,
    )


async def test_parameters_modes_and_batches(db: Db) -> None:
    async with client(db) as c:
        r = await c.post(
            "/sql", json={"query": "CREATE TABLE t (id INT PRIMARY KEY, s TEXT, j JSON)"}
        )
        assert r.status_code == 200, r.text
        tricky = "it's a \\' trap'; DROP TABLE t; -- ? 🦭"
        r = await c.post(
            "/sql",
            json={
                "query": "INSERT INTO t VALUES (?, ?, ?)",
                "params": [1, tricky, {"k": [1, None]}],
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["rowCount"] == 1
        r = await c.post(
            "/sql",
            json={
                "query": "SELECT id, s, j, ? AS n, '?' AS q FROM t WHERE id = ?",
                "params": [None, 1],
            },
        )
        body = r.json()
        assert body["rows"] == [
            {"id": 1, "s": tricky, "j": '{"k": [1, null]}', "n": None, "q": "?"}
        ]
        assert [f["name"] for f in body["fields"]] == ["id", "s", "j", "n", "q"]
        r = await c.post(
            "/sql",
            json={"query": "SELECT id, s FROM t"},
            headers={"Selkie-Array-Mode": "true"},
        )
        assert r.json()["rows"] == [[1, tricky]]
        # A batch is one transaction: the failing third statement undoes the first two.
        r = await c.post(
            "/sql",
            json={
                "queries": [
                    {"query": "INSERT INTO t (id, s) VALUES (?, ?)", "params": [2, "two"]},
                    {"query": "UPDATE t SET s = ? WHERE id = 1", "params": ["changed"]},
                    {"query": "INSERT INTO t (id) VALUES (?)", "params": [1]},
                ]
            },
        )
        assert r.status_code == 400 and r.json()["code"] == "1062"
        r = await c.post("/sql", json={"query": "SELECT COUNT(*) AS n, MAX(s) AS s FROM t"})
        assert r.json()["rows"] == [{"n": 1, "s": tricky}]
        ok = await c.post(
            "/sql",
            json={
                "queries": [
                    {"query": "INSERT INTO t (id, s) VALUES (?, ?)", "params": [2, "two"]},
                    {"query": "SELECT COUNT(*) AS n FROM t"},
                ]
            },
        )
        assert ok.status_code == 200 and ok.json()["results"][1]["rows"] == [{"n": 2}]
        bad = await c.post("/sql", json={"query": "SELECT ?", "params": []})
        assert bad.status_code == 400 and "placeholders" in bad.json()["error"]["message"]
    # A connection string instead of Basic auth, naming the database.
    assert db.platform.proxy is not None and db.platform.proxy.http is not None
    url = f"mysql://{db.user}:{db.password}@localhost/{db.database}"
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(
            f"http://127.0.0.1:{db.platform.proxy.http.port}/sql",
            json={"query": "SELECT DATABASE() AS d"},
            headers={"Selkie-Connection-String": url},
        )
        assert r.json()["rows"] == [{"d": db.database}]
        r = await c.post(
            f"http://127.0.0.1:{db.platform.proxy.http.port}/sql",
            json={"query": "SELECT 1"},
            headers={"Selkie-Connection-String": f"mysql://{db.user}:wrong@localhost/"},
        )
        assert r.status_code == 401


async def test_requests_reuse_reset_connections(db: Db) -> None:
    async with client(db) as c:
        # The first request finds the role's database (its connection logged in without one
        # is not kept); later ones log in there and are kept.
        await c.post("/sql", json={"query": "SELECT 1"})
        r = await c.post("/sql", json={"query": "SET @leak = 'secret'"})
        assert r.status_code == 200
        assert db.platform.proxy is not None and db.platform.proxy.http is not None
        front = db.platform.proxy.http
        assert front.idle.count() == 1  # kept for the next request
        r = await c.post("/sql", json={"query": "SELECT @leak AS v, DATABASE() AS d"})
        # The same connection, reset: nothing of the last request's session is left.
        assert r.json()["rows"] == [{"v": None, "d": db.database}]
        assert front.idle.count() == 1


def test_which_statements_leave_nothing_behind() -> None:
    from selkie.proxy.http.server import leaves_nothing

    for read in (
        "SELECT id FROM t WHERE id = 1",
        "show tables",
        " select '@;' ",
        "WITH x AS (SELECT 1) SELECT * FROM x",
    ):
        assert leaves_nothing(read), read
    for stateful in (
        "SELECT 1 INTO @x",
        "SELECT @x := 1",
        "SET @x = 1",
        "USE other",
        "INSERT INTO t VALUES (1)",
        "SELECT LAST_INSERT_ID()",
        "SELECT GET_LOCK('a', 1)",
        "SELECT 1; SET @x = 2",
        "LOCK TABLES t READ",
    ):
        assert not leaves_nothing(stateful), stateful


async def test_other_routes_and_methods(db: Db) -> None:
    async with client(db) as c:
        assert (await c.post("/nowhere", json={})).status_code == 404
        r = await c.get("/sql")
        assert r.status_code == 405 and "POST" in r.json()["error"]["message"]
