"""The pooler with real clients and real computes: multiplexing under load, every pinning
rule, prepared statements across backends, LAST_INSERT_ID, the backend cap and its queue,
and idle sessions that survive a suspend."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mysql.connector
import pymysql
import pytest

from selkie.config import load_settings
from selkie.control.bootstrap import local_principal
from selkie.mysql.stream import frame
from selkie.platform import Platform
from selkie.proxy.pooler.pool import EndpointPool
from tests.helpers import free_port, seed_template
from tests.platforms import require_mariadb
from tests.proxy.conftest import Db
from tests.proxy.test_fuzz import login, recv_packet

pytestmark = pytest.mark.timeout(300)


async def pooled_platform(tmp_path: Path, template: Path, *, cap: int) -> Platform:
    """A platform with its proxy, its pooler capped at ``cap`` backends; its data dir starts
    from a copy of ``template`` (the session's template_datadir): no mariadb-install-db."""
    require_mariadb()
    seed_template(template, tmp_path / "data")
    settings = load_settings(
        environ={
            "SELKIE_DATA_DIR": str(tmp_path / "data"),
            "SELKIE_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "SELKIE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            "SELKIE_POOLER_MAX_BACKENDS": str(cap),
            "SELKIE_POOLER_WAIT_TIMEOUT": "20",
        }
    )
    p = Platform.open(settings)
    await p.start(proxy=True)
    return p


async def pooled_db(p: Platform, mode: str = "transaction") -> Db:
    who = local_principal(p.control)
    created = await asyncio.to_thread(p.control.projects.create, who, name="pooled")
    await asyncio.to_thread(
        p.control.endpoints.update,
        who,
        created.project.id,
        created.endpoints[0].id,
        {"pooler_enabled": True, "pooler_mode": mode},
    )
    await p.runner.wait_idle()
    return Db(platform=p, created=created)


@pytest.fixture
async def db(
    tmp_path: Path, template_datadir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Db]:
    """A pooled endpoint with two backends, or as many as ``@pytest.mark.backends(n)`` says
    (one: every client shares the same backend)."""
    marker = request.node.get_closest_marker("backends")
    p = await pooled_platform(tmp_path, template_datadir, cap=marker.args[0] if marker else 2)
    try:
        yield await pooled_db(p)
    finally:
        await p.stop()
        p.close()


def conn(db: Db, **kw):  # type: ignore[no-untyped-def]
    args = dict(
        host="127.0.0.1",
        port=db.port,
        user=f"{db.endpoint_id}-pooler.{db.role}",
        password=db.password,
        database=db.database,
        autocommit=True,
        ssl_disabled=True,
        connect_timeout=30,
    )
    args.update(kw)
    return pymysql.connect(**args)


def q(c, sql: str, args=None):  # type: ignore[no-untyped-def]
    with c.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def pool(db: Db) -> EndpointPool:
    assert db.platform.proxy is not None
    return db.platform.proxy.pools[db.endpoint_id]


def in_use(db: Db) -> int:
    """Backends held, once the proxy has finished with the last response (it may release
    a backend a moment after the client has read the answer)."""
    time.sleep(0.05)
    return pool(db).in_use


# --- multiplexing under load ------------------------------------------------------------------


async def test_1000_clients_over_20_backends(tmp_path: Path, template_datadir: Path) -> None:
    p = await pooled_platform(tmp_path, template_datadir, cap=20)
    try:
        db = await pooled_db(p)
        setup = await asyncio.to_thread(conn, db)
        await asyncio.to_thread(q, setup, "CREATE TABLE acct (id INT PRIMARY KEY, n INT NOT NULL)")
        await asyncio.to_thread(q, setup, "INSERT INTO acct SELECT seq, 0 FROM seq_1_to_50")
        await asyncio.to_thread(
            q, setup, "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, client INT, v INT)"
        )
        observed: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            # The cap, seen from the compute's own process list.
            c = pymysql.connect(
                unix_socket=str(p.driver.socket_path(db.endpoint_id)), user=p.driver.os_user
            )
            while not stop.is_set():
                observed.append(
                    q(
                        c,
                        "SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s",
                        (db.role,),
                    )[0][0]
                )
                time.sleep(0.02)
            c.close()

        def open_all() -> list:  # type: ignore[type-arg]
            with ThreadPoolExecutor(max_workers=16) as ex:
                return list(ex.map(lambda _: conn(db), range(1000)))

        clients = await asyncio.to_thread(open_all)
        watcher = threading.Thread(target=watch)
        watcher.start()
        expected_sum = 0
        plan = []
        rng = random.Random(7)
        for i in range(1000):
            v, acct = rng.randint(1, 1000), rng.randint(1, 50)
            plan.append((i, v, acct))
            expected_sum += v

        def work(item: tuple[int, int, int]) -> None:
            i, v, acct = item
            c = clients[i]
            q(c, "INSERT INTO log (client, v) VALUES (%s, %s)", (i, v))
            (lii,) = q(c, "SELECT LAST_INSERT_ID()")[0]
            assert q(c, "SELECT client FROM log WHERE id = %s", (lii,))[0][0] == i
            c.begin()
            q(c, "UPDATE acct SET n = n + 1 WHERE id = %s", (acct,))
            q(c, "SELECT n FROM acct WHERE id = %s", (acct,))
            c.commit()
            q(c, "SELECT COUNT(*) FROM log")

        def run_all() -> None:
            with ThreadPoolExecutor(max_workers=50) as ex:
                list(ex.map(work, plan))

        await asyncio.to_thread(run_all)
        stop.set()
        await asyncio.to_thread(watcher.join)
        total, rows = (await asyncio.to_thread(q, setup, "SELECT SUM(v), COUNT(*) FROM log"))[0]
        assert (int(total), rows) == (expected_sum, 1000)
        assert (await asyncio.to_thread(q, setup, "SELECT SUM(n) FROM acct"))[0][0] == 1000
        digest = hashlib.sha256(repr(sorted((i, v) for i, v, _ in plan)).encode()).hexdigest()
        got = await asyncio.to_thread(q, setup, "SELECT client, v FROM log ORDER BY client")
        assert hashlib.sha256(repr([tuple(r) for r in got]).encode()).hexdigest() == digest
        metrics = pool(db).metrics()
        assert observed and max(observed) <= 20, max(observed)
        assert metrics["backends_peak"] <= 20
        assert metrics["clients"] == 1001
        await asyncio.to_thread(lambda: [c.close() for c in [*clients, setup]])
    finally:
        await p.stop()
        p.close()


# --- pinning ------------------------------------------------------------------------------------


async def held_after(db: Db, *statements: str) -> tuple[int, object]:
    """Run statements on a fresh pooled session; how many backends are held once it is idle,
    and the result of its last statement (run while another client used the pool)."""

    def run() -> tuple[int, object]:
        a = conn(db)
        other = conn(db)
        try:
            result = None
            for sql in statements[:-1]:
                q(a, sql)
            held = in_use(db)
            q(other, "SELECT 1")  # another client borrows whatever is free
            result = q(a, statements[-1])
            return held, result
        finally:
            a.close()
            other.close()

    return await asyncio.to_thread(run)


@pytest.mark.parametrize(
    ("name", "statements", "expected"),
    [
        ("user variable", ["SET @x = 41", "SELECT @x + 1"], ((42,),)),
        (
            "temporary table",
            ["CREATE TEMPORARY TABLE tt (i INT)", "INSERT INTO tt VALUES (3)", "SELECT * FROM tt"],
            ((3,),),
        ),
        ("text PREPARE", ["PREPARE s FROM 'SELECT 5'", "EXECUTE s"], ((5,),)),
        (
            "GET_LOCK",
            ["SELECT GET_LOCK('k', 1)", "SELECT IS_USED_LOCK('k') = CONNECTION_ID()"],
            ((1,),),
        ),
        (
            "SQL_CALC_FOUND_ROWS",
            [
                "CREATE TABLE IF NOT EXISTS f (i INT)",
                "INSERT INTO f VALUES (1),(2),(3)",
                "SELECT SQL_CALC_FOUND_ROWS * FROM f LIMIT 1",
                "SELECT FOUND_ROWS()",
            ],
            ((3,),),
        ),
        (
            "unknown SET",
            ["SET SESSION max_heap_table_size = 1048576", "SELECT @@max_heap_table_size"],
            ((1048576,),),
        ),
        ("warnings until read", ["SELECT 1/0", "SHOW COUNT(*) WARNINGS"], ((1,),)),
    ],
)
async def test_pinning_rules(db: Db, name: str, statements: list[str], expected: object) -> None:
    held, result = await held_after(db, *statements)
    assert held == 1, f"{name} did not pin the session"
    assert result == expected


async def test_transactions_savepoints_and_lock_tables_pin_until_they_end(db: Db) -> None:
    def run() -> list[int]:
        a = conn(db)
        seen = []
        q(a, "CREATE TABLE IF NOT EXISTS s (i INT)")
        seen.append(in_use(db))  # 0: idle, nothing held
        a.begin()
        q(a, "INSERT INTO s VALUES (1)")
        q(a, "SAVEPOINT sp")
        q(a, "INSERT INTO s VALUES (2)")
        q(a, "ROLLBACK TO SAVEPOINT sp")
        seen.append(in_use(db))  # 1: inside a transaction
        a.commit()
        seen.append(len(q(a, "SELECT * FROM s")))
        q(a, "LOCK TABLES s WRITE")
        seen.append(in_use(db))  # 1: LOCK TABLES pins
        q(a, "UNLOCK TABLES")
        seen.append(in_use(db))  # 0 again
        a.close()
        return seen

    seen = await asyncio.to_thread(run)
    assert seen == [0, 1, 1, 1, 0]  # one row survived the rollback to the savepoint


async def test_known_sets_and_database_are_replayed_not_pinned(db: Db) -> None:
    who = local_principal(db.platform.control)
    await asyncio.to_thread(
        db.platform.control.databases.create,
        who,
        db.created.project.id,
        db.created.branch.id,
        name="other",
        owner_name=db.role,
    )
    await db.platform.runner.wait_idle()

    def run() -> tuple[int, tuple]:  # type: ignore[type-arg]
        a = conn(db)
        b = conn(db)
        q(a, "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")
        q(a, "SET SESSION sql_mode = 'ANSI_QUOTES,NO_ZERO_DATE', time_zone = '+02:00'")
        q(a, "USE other")
        held = in_use(db)
        # B takes the backend A used, resets it, and sees nothing of A's session.
        assert q(b, "SELECT DATABASE(), @@time_zone")[0] == (db.database, "SYSTEM")
        row = q(a, "SELECT DATABASE(), @@sql_mode, @@time_zone, @@collation_connection")[0]
        a.close()
        b.close()
        return held, row

    held, row = await asyncio.to_thread(run)
    assert held == 0
    assert row == ("other", "ANSI_QUOTES,NO_ZERO_DATE", "+02:00", "utf8mb4_unicode_ci")


# --- prepared statements and LAST_INSERT_ID -----------------------------------------------------


async def test_prepared_statements_move_between_backends(db: Db) -> None:
    def run() -> list[tuple]:  # type: ignore[type-arg]
        setup = conn(db)
        q(setup, "CREATE TABLE ps (id INT PRIMARY KEY, name VARCHAR(20))")
        q(setup, "INSERT INTO ps VALUES (1, 'one'), (2, 'two'), (3, 'three')")
        cnx = connector_conn(db, db.database)
        cur = cnx.cursor(prepared=True)
        cur.execute("SELECT name FROM ps WHERE id = ?", (1,))
        first = cur.fetchall()
        # Pin both backends elsewhere in turn, so the next execute lands on another one.
        blocker = conn(db)
        q(blocker, "SET @pin = 1")
        cur.execute("SELECT name FROM ps WHERE id = ?", (2,))
        second = cur.fetchall()
        blocker.close()
        cur.execute("SELECT name FROM ps WHERE id = ?", (3,))
        third = cur.fetchall()
        cnx.close()
        setup.close()
        return [tuple(x) for x in first + second + third]

    assert await asyncio.to_thread(run) == [("one",), ("two",), ("three",)]


@pytest.mark.backends(1)
async def test_last_insert_id_stays_correct_under_multiplexing(db: Db) -> None:

    def run() -> list[int]:
        a, b = conn(db), conn(db)
        q(a, "CREATE TABLE ai (id INT AUTO_INCREMENT PRIMARY KEY, who CHAR(1))")
        q(a, "INSERT INTO ai (who) VALUES ('a')")
        q(b, "INSERT INTO ai (who) VALUES ('b')")
        q(b, "INSERT INTO ai (who) VALUES ('b')")
        out = [q(a, "SELECT LAST_INSERT_ID()")[0][0], q(b, "SELECT LAST_INSERT_ID()")[0][0]]
        c = conn(db)  # inserted nothing: reads 0, not the id another client made here
        out.append(q(c, "SELECT LAST_INSERT_ID()")[0][0])
        for x in (a, b, c):
            x.close()
        return out

    assert await asyncio.to_thread(run) == [1, 3, 0]


def raw_pooled(db: Db) -> socket.socket:
    """A pooled session spoken to packet by packet (for what client libraries do not
    expose: which statement id and which parameter types go out)."""
    return login(db, user=f"{db.endpoint_id}-pooler.{db.role}")


def raw_prepare(sock: socket.socket, sql: bytes) -> int:
    sock.sendall(frame(0, b"\x16" + sql)[0])
    ok = recv_packet(sock)[1]
    assert ok[0] == 0, ok
    stmt, columns, params = struct.unpack("<IHH", ok[1:9])
    for _ in range(columns + params):  # DEPRECATE_EOF: no EOF after the definitions
        recv_packet(sock)
    return int(stmt)


def raw_execute_text(sock: socket.socket, stmt: int, types: bytes | None, value: bytes) -> str:
    """COM_STMT_EXECUTE of a one-parameter statement returning one string column; types
    None sends new_params_bound_flag 0 (the types bound before stand)."""
    bound = b"\x00" if types is None else b"\x01" + types
    sock.sendall(frame(0, b"\x17" + struct.pack("<IBI", stmt, 0, 1) + b"\x00" + bound + value)[0])
    first = recv_packet(sock)[1]
    assert first[0] not in (0x00, 0xFF), first
    recv_packet(sock)  # the column definition
    row = recv_packet(sock)[1]  # 0x00, a NULL bitmap byte, then the lenenc string
    assert row[0] == 0 and recv_packet(sock)[1][0] == 0xFE
    return row[3 : 3 + row[2]].decode()


@pytest.mark.backends(1)
async def test_statements_are_shared_by_sql_and_parameter_types_rebound(db: Db) -> None:

    def prepares(c: pymysql.Connection) -> int:  # type: ignore[type-arg]
        return int(q(c, "SHOW GLOBAL STATUS LIKE 'Com_stmt_prepare'")[0][1])

    def run() -> tuple[list[str], int, int]:
        admin = conn(db)
        before = prepares(admin)
        a, b = raw_pooled(db), raw_pooled(db)
        sql = b"SELECT CAST(? AS CHAR) AS v"
        sa, sb = raw_prepare(a, sql), raw_prepare(b, sql)
        longlong, string = b"\x08\x00", b"\xfd\x00"
        seen = [
            raw_execute_text(a, sa, longlong, struct.pack("<q", 7)),
            raw_execute_text(b, sb, string, b"\x03abc"),
            # A relies on the types it bound; the backend's statement last had B's.
            raw_execute_text(a, sa, None, struct.pack("<q", 8)),
            raw_execute_text(b, sb, None, b"\x03xyz"),
        ]
        for _ in range(20):
            seen.append(raw_execute_text(a, sa, None, struct.pack("<q", 9)))
        prepared = prepares(admin) - before
        a.close()
        b.close()
        admin.close()
        return seen, prepared, pool(db).resets

    seen, prepared, resets = await asyncio.to_thread(run)
    assert seen[:4] == ["7", "abc", "8", "xyz"] and set(seen[4:]) == {"9"}
    # Two clients' prepares and nothing more: the backend keeps the statement for both,
    # and clients whose state matches take each other's backend without a reset.
    assert prepared == 2
    assert resets == 0


def connector_conn(db: Db, database: str, timeout: float | None = None):  # type: ignore[no-untyped-def]
    """mysql-connector (pure Python) through the pooler; with ``timeout``, a command stalled
    that long fails instead of hanging the test."""
    c = mysql.connector.connect(
        host="127.0.0.1",
        port=db.port,
        user=f"{db.endpoint_id}-pooler.{db.role}",
        password=db.password,
        database=database,
        use_pure=True,
        ssl_disabled=True,
        autocommit=True,
        **({"connection_timeout": int(timeout)} if timeout else {}),
    )
    if timeout:
        c._socket.sock.settimeout(timeout)
    return c


@pytest.mark.backends(1)
async def test_shared_statements_are_per_database_and_a_prepared_set_pins(db: Db) -> None:
    p = db.platform
    who = local_principal(p.control)
    await asyncio.to_thread(
        p.control.databases.create,
        who,
        db.created.project.id,
        db.created.branch.id,
        name="tenant2",
        owner_name=db.role,
    )
    await p.runner.wait_idle()

    def run() -> tuple[list[int], object, int]:
        setup = conn(db)
        q(setup, "CREATE TABLE users (id INT PRIMARY KEY)")
        q(setup, "INSERT INTO users VALUES (1)")
        q(setup, "CREATE TABLE tenant2.users (id INT PRIMARY KEY)")
        q(setup, "INSERT INTO tenant2.users VALUES (1), (2), (3)")
        setup.close()
        a, b = connector_conn(db, db.database), connector_conn(db, "tenant2")
        ca, cb = a.cursor(prepared=True), b.cursor(prepared=True)
        counts = []
        for cur in (ca, cb, ca, cb):  # the same SQL text, prepared in two databases
            cur.execute("SELECT COUNT(*) FROM users WHERE id > ?", (0,))
            counts.append(cur.fetchall()[0][0])
        # A prepared SET cannot be replayed (its value is a parameter): it pins.
        ca.execute("SET time_zone = ?", ("+03:00",))
        pinned = pool(db).pinned
        a.close()
        b.close()
        c = conn(db)
        zone = q(c, "SELECT @@time_zone")[0][0]  # the pinned backend was not lent out
        c.close()
        return counts, zone, pinned

    counts, zone, pinned = await asyncio.to_thread(run)
    assert counts == [1, 3, 1, 3]
    assert pinned == 1 and zone == "SYSTEM"


@pytest.mark.backends(1)
async def test_driver_sessions_share_a_backend_without_resets(db: Db) -> None:
    """Drivers set NAMES (and more) on connect, a statement each: the next client's SET
    NAMES overwrites the one, what it never set goes back with = DEFAULT, and the backend
    keeps its prepared statements for every client."""

    def run() -> tuple[list[object], int, int, tuple[str, str]]:
        admin = conn(db)
        q(admin, "SET sql_mode = 'ANSI'")  # a value for = DEFAULT to take back

        def prepares() -> int:
            return int(q(admin, "SHOW GLOBAL STATUS LIKE 'Com_stmt_prepare'")[0][1])

        before = prepares()
        a, b = connector_conn(db, db.database), connector_conn(db, db.database)
        ca, cb = a.cursor(prepared=True), b.cursor(prepared=True)
        seen: list[object] = []
        for cur, n in ((ca, 1), (cb, 2), (ca, 3), (cb, 4), (ca, 5)):
            cur.execute("SELECT ? * 10", (n,))
            seen.append(cur.fetchall()[0][0])
        prepared = prepares() - before
        ca.execute("SELECT @@sql_mode")
        ca_mode = ca.fetchall()[0][0]
        modes = (q(admin, "SELECT @@sql_mode")[0][0], ca_mode)  # replayed / defaulted
        for c in (a, b):
            c.close()
        admin.close()
        return seen, prepared, pool(db).resets, modes

    seen, prepared, resets, (admin_mode, client_mode) = await asyncio.to_thread(run)
    assert seen == [10, 20, 30, 40, 50]
    assert prepared == 2 and resets == 0
    assert "ANSI" in admin_mode.split(",") and "ANSI" not in client_mode.split(",")


@pytest.mark.backends(1)
async def test_a_set_built_on_the_current_value_is_kept_as_the_value_it_gave(db: Db) -> None:

    def run() -> tuple[list[str], str]:
        a, b = conn(db), conn(db)
        q(a, "SET sql_mode = 'ANSI_QUOTES'")
        q(b, "SET sql_mode = CONCAT(@@sql_mode, ',NO_ZERO_DATE')")
        q(a, "SELECT 1")  # A's mode back on the one backend
        theirs = q(b, "SELECT @@sql_mode")[0][0].split(",")
        mine = q(a, "SELECT @@sql_mode")[0][0]
        a.close()
        b.close()
        return theirs, mine

    theirs, mine = await asyncio.to_thread(run)
    assert "NO_ZERO_DATE" in theirs and "STRICT_TRANS_TABLES" in theirs
    assert "ANSI_QUOTES" not in theirs and mine == "ANSI_QUOTES"


@pytest.mark.backends(1)
async def test_long_data_left_behind_does_not_reach_the_next_client(db: Db) -> None:
    sql = b"SELECT CAST(? AS CHAR) AS v"

    def run() -> str:
        b = raw_pooled(db)
        sb = raw_prepare(b, sql)  # B will execute the backend's statement for this SQL
        a = raw_pooled(db)
        sa = raw_prepare(a, sql)
        a.sendall(frame(0, b"\x18" + struct.pack("<IH", sa, 0) + b"secret")[0])
        # A SET between long data and execute: the statement holding the data stays known.
        a.sendall(frame(0, b"\x03SET time_zone = '+01:00'")[0])
        assert recv_packet(a)[1][0] == 0x00
        a.sendall(frame(0, b"\x19" + struct.pack("<I", sa))[0])  # closed, never executed
        a.close()
        got = raw_execute_text(b, sb, b"\xfd\x00", b"\x04mine")
        b.close()
        return got

    assert await asyncio.to_thread(run) == "mine"


@pytest.mark.backends(1)
async def test_sets_are_replayed_in_the_order_they_ran(db: Db) -> None:

    def run() -> object:
        a, b = conn(db), conn(db)
        q(a, "SET character_set_client = latin1")
        q(a, "SET NAMES koi8r")  # supersedes the one before
        q(b, "SELECT 1")  # B resets the backend; A's state is replayed next
        got = q(a, "SELECT @@character_set_client")[0][0]
        a.close()
        b.close()
        return got

    assert await asyncio.to_thread(run) == "koi8r"


async def test_server_side_cursors_are_refused_clearly(db: Db) -> None:
    def run() -> bytes:
        sock = raw_pooled(db)
        stmt = raw_prepare(sock, b"SELECT 1")
        sock.sendall(frame(0, b"\x17" + struct.pack("<IBI", stmt, 1, 1))[0])  # a read-only cursor
        reply = recv_packet(sock)[1]
        sock.close()
        return reply

    reply = await asyncio.to_thread(run)
    assert reply[0] == 0xFF and struct.unpack("<H", reply[1:3])[0] == 1235
    assert reply[3:9] == b"#42000" and b"cursors are not supported" in reply


@pytest.mark.backends(1)
async def test_statements_given_back_when_the_server_has_no_room(db: Db) -> None:
    p = db.platform
    sql = b"SELECT CAST(? AS CHAR) AS v"
    longlong = b"\x08\x00"

    def first() -> str:
        a = raw_pooled(db)
        got = raw_execute_text(a, raw_prepare(a, sql), longlong, struct.pack("<q", 1))
        a.close()  # the backend keeps the statement for its next client
        return got

    def second() -> str:
        b = raw_pooled(db)
        other = b"SELECT CAST(? + 1 AS CHAR) AS v"  # needs a statement slot of its own
        got = raw_execute_text(b, raw_prepare(b, other), longlong, struct.pack("<q", 1))
        b.close()
        return got

    one = await asyncio.to_thread(first)
    await p.driver.execute(db.endpoint_id, ["SET GLOBAL max_prepared_stmt_count = 1"])
    two = await asyncio.to_thread(second)
    assert (one, two) == ("1", "2")
    assert pool(db).resets == 0  # the room came from the backend's own statements


@pytest.mark.backends(1)
async def test_executable_comments_are_tracked_like_the_statements_inside(db: Db) -> None:

    def run() -> tuple[object, object]:
        a, b = conn(db), conn(db)
        q(a, "/*!40101 SET NAMES latin1 */")
        theirs = q(b, "SELECT @@character_set_client")[0][0]
        mine = q(a, "SELECT @@character_set_client")[0][0]
        a.close()
        b.close()
        return theirs, mine

    assert await asyncio.to_thread(run) == ("utf8mb4", "latin1")


@pytest.mark.backends(1)
async def test_a_stored_procedure_gets_the_backend_reset_for_the_next_client(db: Db) -> None:

    def run() -> tuple[object, int]:
        a, b = conn(db), conn(db)
        default = q(b, "SELECT @@sql_mode")[0][0]
        q(a, "CREATE PROCEDURE loose() BEGIN SET SESSION sql_mode = 'ANSI'; END")
        q(a, "CALL loose()")  # changes the session behind the proxy's back
        seen = q(b, "SELECT @@sql_mode")[0][0]
        a.close()
        b.close()
        return seen == default, pool(db).resets

    assert await asyncio.to_thread(run) == (True, 1)


@pytest.mark.backends(1)
async def test_a_failed_set_over_another_clients_value_does_not_leave_it(db: Db) -> None:

    def run() -> tuple[object, object]:
        a, b = conn(db), conn(db)
        q(a, "SET time_zone = '+02:00'")
        # B's own SET would have replaced A's value, so no reset was needed; it fails.
        with pytest.raises(pymysql.err.DatabaseError) as err:
            q(b, "SET time_zone = 'No/Such_Zone'")
        zone = q(b, "SELECT @@time_zone")[0][0]
        mine = q(a, "SELECT @@time_zone")[0][0]
        a.close()
        b.close()
        return (err.value.args[0], zone), mine

    assert await asyncio.to_thread(run) == ((1298, "SYSTEM"), "+02:00")


# --- the cap and the queue ----------------------------------------------------------------------


async def test_clients_beyond_the_cap_wait_then_get_a_clear_error(db: Db) -> None:
    def run() -> tuple[object, object]:
        a, b, c = conn(db), conn(db), conn(db)
        pool(db).wait_timeout = 0.5
        a.begin()
        q(a, "SELECT 1")
        b.begin()
        q(b, "SELECT 1")  # both backends now held by open transactions
        with pytest.raises(pymysql.err.OperationalError) as err:
            # A text the pool has not seen: Python's queue, whose timeout was just lowered
            # (the fast lane took "SELECT 1" and the fixture's 20 s at its start).
            q(c, "SELECT 3")
        a.commit()
        waited = q(c, "SELECT 2")  # a backend is free again
        b.commit()
        for x in (a, b, c):
            x.close()
        return err.value.args, waited

    (code, message), waited = await asyncio.to_thread(run)
    assert code == 1040 and "busy" in message
    assert waited == ((2,),)


# --- sessions that survive a suspend ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "tier"), [("transaction", "cold"), ("session", "cold"), ("transaction", "warm")]
)
async def test_idle_session_survives_a_suspend(
    tmp_path: Path, template_datadir: Path, mode: str, tier: str
) -> None:
    # Cold: the compute is stopped and started again; warm: frozen and thawed (where the
    # machine has a freezer; elsewhere a warm suspend is a cold one).
    p = await pooled_platform(tmp_path, template_datadir, cap=2)
    if tier == "cold":
        p.lifecycle.warm_seconds = 0
    try:
        db = await pooled_db(p, mode)
        who = local_principal(p.control)
        await asyncio.to_thread(
            p.control.databases.create,
            who,
            db.created.project.id,
            db.created.branch.id,
            name="second",
            owner_name=db.role,
        )
        await p.runner.wait_idle()
        a = await asyncio.to_thread(conn, db)
        await asyncio.to_thread(q, a, "USE second")
        await asyncio.to_thread(q, a, "SET sql_mode = 'NO_ENGINE_SUBSTITUTION,ANSI_QUOTES'")
        pid = (await p.driver.inspect(db.endpoint_id)).pid
        await asyncio.to_thread(
            p.control.endpoints.update,
            who,
            db.created.project.id,
            db.endpoint_id,
            {"suspend_timeout_seconds": 1},
        )
        for _ in range(300):
            if db.state() == "suspended":
                break
            await asyncio.sleep(0.02)
        assert db.state() == "suspended"
        assert pid is not None
        if tier == "warm" and p.lifecycle.warm_enabled:
            assert p.driver.is_frozen(db.endpoint_id) and Path(f"/proc/{pid}").exists()
        else:
            assert not Path(f"/proc/{pid}").exists()
        row = await asyncio.to_thread(q, a, "SELECT DATABASE(), @@sql_mode")
        assert row == (("second", "ANSI_QUOTES,NO_ENGINE_SUBSTITUTION"),)
        # A thawed compute answers at once; the store says active a moment later.
        for _ in range(250):
            if db.state() == "active":
                break
            await asyncio.sleep(0.02)
        assert db.state() == "active"
        a.close()
    finally:
        await p.stop()
        p.close()


async def test_pooler_metrics_through_the_api(db: Db) -> None:
    from fastapi.testclient import TestClient

    from selkie.api.app import create_app

    p = db.platform
    who = local_principal(p.control)
    _, key = await asyncio.to_thread(p.control.api_keys.create, who, name="metrics")
    api = TestClient(create_app(p.control, runtime=p))
    url = f"/v1/projects/{db.created.project.id}/endpoints/{db.endpoint_id}/pooler"

    def run() -> dict:  # type: ignore[type-arg]
        clients = [conn(db) for _ in range(3)]
        q(clients[0], "SET @pinned = 1")
        time.sleep(0.05)
        body = api.get(url, headers={"Authorization": f"Bearer {key}"}).json()
        for c in clients:
            c.close()
        return body  # type: ignore[no-any-return]

    body = await asyncio.to_thread(run)
    assert body["pooler_enabled"] is True and body["pooler_mode"] == "transaction"
    metrics = body["metrics"]
    assert metrics["clients"] == 3 and metrics["pinned_sessions"] == 1
    assert metrics["backends_in_use"] == 1 and metrics["backends_peak"] <= 2


async def test_a_client_that_leaves_mid_transaction_does_not_lend_out_its_transaction(
    db: Db,
) -> None:
    def run() -> tuple[int, object]:
        setup = conn(db)
        q(setup, "CREATE TABLE lt (i INT PRIMARY KEY)")
        a = conn(db)
        a.begin()
        q(a, "INSERT INTO lt VALUES (1)")
        a.close()  # gone without COMMIT
        time.sleep(0.1)
        # The row lock is gone with the transaction: another client can take the same key.
        b = conn(db)
        q(b, "INSERT INTO lt VALUES (1)")
        count = q(b, "SELECT COUNT(*) FROM lt")[0][0]
        b.close()
        setup.close()
        return count, pool(db).metrics()["pinned_sessions"]

    assert await asyncio.to_thread(run) == (1, 0)
