"""`KILL` with the id a session's greeting carried (issue 34, item 2). That id is the
proxy's, sent before the compute is known; drivers hold it and KILL with it. The proxy maps
it to the compute's thread id of the connection serving that session, through each relay and
the pooler, for sessions of the same endpoint and role; any other id of the proxy's is
"Unknown thread id" and stops nothing. Proxy ids lie above every thread id a compute gives
out, so a KILL never lands on another session by a coincidence of numbers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pymysql
import pytest

from selkie.control.bootstrap import local_principal
from selkie.proxy.relay import ThreadedRelay
from selkie.proxy.sessions import SESSION_ID_BASE, LiveSessions, may_kill, session_ids
from tests.proxy.conftest import Db
from tests.proxy.test_clients import pymysql_conn

pytestmark = pytest.mark.timeout(120)

PATHS = ["c", "python", "tls", "pooler"]


def test_ids_stay_in_the_upper_half_and_wrap_there() -> None:
    ids = session_ids()
    first = [next(ids) for _ in range(1000)]
    assert all(SESSION_ID_BASE <= i < 2 * SESSION_ID_BASE for i in first)
    assert len(set(first)) == 1000


def test_what_is_read_as_a_kill() -> None:
    live = LiveSessions()
    assert may_kill(b"\x03KILL QUERY 1") and may_kill(b"\x03kill\t5")
    assert not may_kill(b"\x03KILLER") and not may_kill(b"\x03SELECT 1")
    assert not may_kill(b"\x03KILL " + b"1" * 80)  # longer than any KILL of an id
    # Thread ids of the compute (from CONNECTION_ID()) and other shapes go on as they are.
    for as_is in (b"\x03KILL 12", b"\x03KILL USER bob", b"\x03KILL QUERY 5 -- x"):
        assert live.kill(as_is, "ep", "role") == (as_is, None)
    gone = live.kill(b"\x03KILL %d" % (SESSION_ID_BASE + 7), "ep", "role")
    assert gone[0] is None and gone[1] is not None and b"Unknown thread id" in gone[1]


def connect(db: Db, path: str, **kw: Any) -> pymysql.Connection:  # type: ignore[type-arg]
    if path == "python":
        assert db.platform.proxy is not None
        db.platform.proxy.passthrough.relay_class = ThreadedRelay
    if path == "pooler":
        kw["user"] = f"{db.endpoint_id}-pooler.{db.role}"
    tls = {"ssl_ca": str(db.cert)} if path == "tls" else {"ssl_disabled": True}
    return pymysql_conn(db, read_timeout=20, **tls, **kw)


def sleep_and_kill(
    victim: pymysql.Connection,  # type: ignore[type-arg]
    killer: pymysql.Connection,  # type: ignore[type-arg]
    statement: str,
) -> tuple[list[object], float, object]:
    """The victim sleeps 4 s; the killer runs ``statement`` (with the victim's greeting id)
    half a second in. What the sleep returned (or its error code), how long it took, and the
    killer's error code (None: the KILL succeeded)."""
    out: list[object] = []

    def sleep() -> None:
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(4)")
                out.append(cur.fetchone())
        except pymysql.err.OperationalError as exc:
            out.append(exc.args[0])

    t0 = time.monotonic()
    t = threading.Thread(target=sleep)
    t.start()
    time.sleep(0.5)
    killed: object = None
    try:
        with killer.cursor() as cur:
            cur.execute(statement.format(id=victim.thread_id()))
    except pymysql.err.MySQLError as exc:
        killed = exc.args[0]
    t.join(10)
    return out, time.monotonic() - t0, killed


@pytest.mark.parametrize("path", PATHS)
async def test_kill_query_with_the_greetings_id_stops_that_session(db: Db, path: str) -> None:
    if path == "pooler":
        await db.update_endpoint({"pooler_enabled": True, "pooler_mode": "transaction"})

    def run() -> tuple[list[object], float, object, int]:
        victim, killer = connect(db, path), connect(db, path)
        try:
            out, took, killed = sleep_and_kill(victim, killer, "KILL QUERY {id}")
            with victim.cursor() as cur:  # the session goes on: only its statement stopped
                cur.execute("SELECT 7")
                after = cur.fetchone()[0]
            return out, took, killed, after
        finally:
            victim.close()
            killer.close()

    out, took, killed, after = await asyncio.to_thread(run)
    assert killed is None
    assert out in ([(1,)], [1317]) and took < 3, (out, took)  # cut short, not 4 s
    assert after == 7


async def test_kill_connection_with_the_greetings_id_ends_that_session(db: Db) -> None:
    def run() -> tuple[list[object], float, object]:
        victim, killer = connect(db, "c"), connect(db, "c")
        try:
            return sleep_and_kill(victim, killer, "KILL {id}")
        finally:
            victim.close()
            killer.close()

    out, took, killed = await asyncio.to_thread(run)
    # The server's own word for it (1927 "Connection was killed"), or a lost connection.
    assert killed is None and out in ([1927], [2013]) and took < 3, (out, took, killed)


async def test_another_roles_or_a_gone_sessions_id_is_unknown(db: Db) -> None:
    who = local_principal(db.platform.control)
    other, _ = await asyncio.to_thread(
        db.platform.control.roles.create,
        who,
        db.created.project.id,
        db.created.branch.id,
        name="other",
    )
    await db.platform.runner.wait_idle()

    def run() -> tuple[list[object], object, object]:
        victim = connect(db, "c")
        stranger = pymysql_conn(
            db,
            user=f"{db.endpoint_id}.other",
            password=other.password,
            database=None,
            ssl_disabled=True,
        )
        try:
            out, took, killed = sleep_and_kill(victim, stranger, "KILL QUERY {id}")
            assert took >= 3.5  # the sleep ran to its end
            with pytest.raises(pymysql.err.OperationalError) as gone, stranger.cursor() as cur:
                cur.execute(f"KILL {SESSION_ID_BASE + 12345}")
            return out, killed, gone.value.args[0]
        finally:
            victim.close()
            stranger.close()

    out, killed, unknown = await asyncio.to_thread(run)
    assert out == [(0,)] and killed == 1094 and unknown == 1094


@pytest.mark.parametrize("path", ["c", "python", "tls"])
async def test_connection_id_is_the_greetings_through_each_relay(db: Db, path: str) -> None:
    """Drivers compare CONNECTION_ID() with the greeting's id (PyMySQL test_issue_36, DBD
    t/65segfault): the compute says the proxy's id. A role cannot take an id below the
    proxy's range (one a compute gives out) through the routine that sets it."""

    def run() -> tuple[list[int], int, int, object]:
        conns = [connect(db, path) for _ in range(2)]
        try:
            seen = []
            for conn in conns:
                with conn.cursor() as cur:
                    cur.execute("SELECT CONNECTION_ID()")
                    seen.append(cur.fetchone()[0])
            with conns[0].cursor() as cur:
                # The compute's own id for it is still in the process list.
                cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE ID < 2147483648")
                real = cur.fetchall()
                refused: object = None
                try:
                    cur.execute(f"CALL mysql.selkie_connection_id({real[0][0]})")
                except pymysql.err.MySQLError as exc:
                    refused = exc.args[0]
            return seen, conns[0].thread_id(), conns[1].thread_id(), refused
        finally:
            for conn in conns:
                conn.close()

    seen, first, second, refused = await asyncio.to_thread(run)
    assert seen == [first, second] and first != second
    assert all(i >= SESSION_ID_BASE for i in seen)
    assert refused == 1644  # SIGNAL from the routine: not an id of the proxy's range
