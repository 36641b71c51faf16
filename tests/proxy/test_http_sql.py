"""Neon-style POST /sql from Python (httpx): parameters bound by the proxy (strings of any
bytes, NULL, numbers, JSON), array mode, a connection-string header, and a batch that fails
half-way leaves nothing."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import pytest

from tests.proxy.conftest import Db
from tests.proxy.pooler.test_pool import pooled_db, pooled_platform

EXECUTE = "/psdb.v1alpha1.Database/Execute"

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


async def test_requests_share_the_pool_and_leave_nothing_behind(db: Db) -> None:
    async with client(db) as c:
        await c.post("/sql", json={"query": "SELECT 1"})
        r = await c.post("/sql", json={"query": "SET @leak = 'secret'"})
        assert r.status_code == 200
        assert db.platform.proxy is not None
        pool = db.platform.proxy.pools[db.endpoint_id]
        assert (pool.total, pool.in_use, pool.resets) == (1, 0, 1)  # kept, reset
        r = await c.post("/sql", json={"query": "SELECT @leak AS v, DATABASE() AS d"})
        # The same backend: nothing of the last request's session is left, its database is.
        assert r.json()["rows"] == [{"v": None, "d": db.database}]
        assert (pool.total, pool.resets) == (1, 2)  # reading a variable: reset after
        r = await c.post(
            "/sql", json={"query": "SELECT COUNT(*) AS n FROM information_schema.TABLES"}
        )
        assert r.status_code == 200
        assert (pool.total, pool.resets) == (1, 2)  # a plain read needs no reset


async def test_many_callers_share_few_backends_and_a_full_pool_answers_429(
    tmp_path: Path, template_datadir: Path
) -> None:
    p = await pooled_platform(tmp_path, template_datadir, cap=2)
    try:
        db = await pooled_db(p)
        async with client(db) as c:
            replies = await asyncio.gather(
                *(
                    c.post("/sql", json={"query": f"SELECT {i} AS n, SLEEP(0.05)"})
                    for i in range(32)
                )
            )
            assert [r.json()["rows"][0]["n"] for r in replies] == list(range(32))
            assert p.proxy is not None
            pool = p.proxy.pools[db.endpoint_id]
            assert pool.peak == 2  # 32 callers, two compute connections
            # Two interactive transactions hold both backends: the next caller waits, then
            # is told to come back later.
            pool.wait_timeout = 0.5
            sessions = []
            for _ in range(2):
                r = await c.post(EXECUTE, json={"query": "BEGIN", "session": None})
                assert r.status_code == 200, r.text
                sessions.append(r.json()["session"])
            assert pool.pinned == 2
            busy = await c.post("/sql", json={"query": "SELECT 1"})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert "busy" in busy.json()["error"]["message"]
            r = await c.post(EXECUTE, json={"query": "COMMIT", "session": sessions[0]})
            assert r.status_code == 200 and pool.pinned == 1
            assert (await c.post("/sql", json={"query": "SELECT 1"})).status_code == 200
            # The other one is abandoned: at its TTL the backend is closed (rolled back).
            assert p.proxy.http is not None
            for held in p.proxy.http.sessions.pinned.values():
                held.expires = 0
            assert await p.proxy.http.sessions.reap() == 1
            assert pool.pinned == 0 and pool.in_use == 0
    finally:
        await p.stop()
        p.close()


def test_which_statements_leave_nothing_behind() -> None:
    from selkie.proxy.http.front import leaves_nothing

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


async def test_accepted_http_connections_have_nagle_off() -> None:
    # With Nagle on, each response waited for the client's delayed ACK (~40 ms).
    import socket

    from selkie.proxy.http.server import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        assert await asyncio.wait_for(seen, 5) != 0
        writer.close()
    finally:
        server.close()
