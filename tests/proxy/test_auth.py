"""Authentication before any wake, one answer for every kind of wrong, rate limits, held
clients, and the errors a woken endpoint can give."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import subprocess
import time
from collections import Counter

import pymysql
import pytest

from selkie.control.bootstrap import local_principal
from selkie.mysql.stream import frame
from selkie.mysql.wire import PROXY_CAPABILITIES, Capability
from selkie.proxy.server import ProxyServer
from tests.proxy.conftest import Db, Faked
from tests.proxy.test_clients import mariadb_cli, pymysql_conn
from tests.proxy.test_fuzz import open_raw, valid_response

pytestmark = pytest.mark.timeout(180)


async def suspended(db: Db) -> None:
    await db.platform.lifecycle.start(db.endpoint_id)
    await db.platform.lifecycle.suspend(db.endpoint_id)
    assert db.state() == "suspended"


async def test_wrong_password_keeps_a_suspended_endpoint_asleep(db: Db) -> None:
    await suspended(db)
    starts = db.platform.start_metrics.start_counts[db.endpoint_id]
    for password in ("wrong", "", db.password + "x"):
        with pytest.raises(pymysql.err.OperationalError) as err:
            await asyncio.to_thread(pymysql_conn, db, password=password, ssl_disabled=True)
        assert err.value.args[0] == 1045
    assert db.state() == "suspended"
    assert not (await db.platform.driver.inspect(db.endpoint_id)).running
    assert db.platform.start_metrics.start_counts[db.endpoint_id] == starts


def login(proxy: ProxyServer, user: str, password: str) -> tuple[int, str]:
    """A pymysql login that the proxy refuses: its error (code, message)."""
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql.connect(
            host="127.0.0.1", port=proxy.port, user=user, password=password, connect_timeout=10
        )
    code, message = err.value.args
    return code, message


async def test_unknown_role_and_endpoint_answer_like_a_wrong_password(faked: Faked) -> None:
    messages = []
    for user in (faked.user, f"{faked.endpoint_id}.nobody", "ep-no-such-000000.owner"):
        code, message = await asyncio.to_thread(login, faked.proxy, user, "wrong")
        assert code == 1045
        messages.append(message.replace(user, "<user>"))
    assert len(set(messages)) == 1, messages
    assert faked.plane.woken == []
    assert faked.proxy.logins == Counter(failed=3)


async def test_failed_logins_slow_down_and_never_lock_out(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.failures.allowed = 3
    proxy.failures.FIRST_DELAY = 0.2

    async def wrong(password: str = "wrong", user: str | None = None) -> float:
        t0 = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as err:
            await asyncio.to_thread(
                pymysql_conn, db, password=password, user=user or db.user, ssl_disabled=True
            )
        assert err.value.args[0] == 1045
        return time.monotonic() - t0

    fast = [await wrong() for _ in range(3)]
    slow = [await wrong() for _ in range(3)]  # 0.2, 0.4, 0.8 s
    assert max(fast) < 0.2 and slow[0] >= 0.2 and slow[2] >= 0.8, (fast, slow)
    assert proxy.logins["delayed"] == 3
    # The right password is answered at once: a guesser locks nobody out.
    t0 = time.monotonic()
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    conn.close()
    assert time.monotonic() - t0 < 0.2 + 5  # no delay but a possible wake
    # A role's budget counts failures from every address.
    proxy.failures.allowed = 1000
    proxy.failures.role_budget = 6
    assert await wrong() >= 0.2
    # Made-up names share one key per address: they never evict a real one's count.
    for i in range(20):
        await wrong(user=f"ep-made-up-{i}.nobody")
    assert len([k for k in proxy.failures._seen if k[1] == "?"]) == 1


async def test_200_concurrent_connects_to_a_suspended_endpoint_start_it_once(db: Db) -> None:
    await suspended(db)
    before = db.platform.start_metrics.start_counts[db.endpoint_id]

    def client(i: int) -> int:
        conn = pymysql_conn(db, ssl_disabled=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT %s", (i,))
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    loop = asyncio.get_running_loop()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = await asyncio.gather(*(loop.run_in_executor(pool, client, i) for i in range(200)))
    assert sorted(results) == list(range(200))
    assert db.platform.start_metrics.start_counts[db.endpoint_id] == before + 1
    assert db.state() == "active"


async def test_a_client_arriving_during_suspend_is_held_and_served(db: Db) -> None:
    await db.platform.lifecycle.start(db.endpoint_id)
    suspend = asyncio.ensure_future(db.platform.lifecycle.suspend(db.endpoint_id))
    await asyncio.sleep(0.005)  # the suspend holds the endpoint's lock now
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    await suspend
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    assert db.state() == "active"


async def test_wake_timeout_is_a_server_error_with_08S01(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.connector.config = dataclasses.replace(proxy.connector.config, wake_timeout=0.001)
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    code, message = err.value.args
    assert code == 1159 and "did not become ready" in message
    # The SQLSTATE reaches the client as well (mariadb CLI prints it).
    proxy.connector.config = dataclasses.replace(proxy.connector.config, wake_timeout=0.001)
    await db.platform.lifecycle.suspend(db.endpoint_id)

    out = await asyncio.to_thread(mariadb_cli, db, "SELECT 1", "--ssl=0")
    assert "ERROR 1159 (08S01)" in out.stderr


async def test_require_tls(db: Db) -> None:
    who = local_principal(db.platform.control)
    await asyncio.to_thread(
        db.platform.control.projects.update,
        who,
        db.created.project.id,
        settings={"require_tls": True},
    )
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    assert err.value.args[0] == 1045 and "requires TLS" in err.value.args[1]
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_ca=str(db.cert))
    conn.close()


async def test_tls_is_required_by_default_beyond_loopback(db: Db) -> None:
    from selkie.config import load_settings
    from selkie.platform import is_loopback, make_proxy

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    settings = load_settings(
        environ={
            "SELKIE_DATA_DIR": str(db.platform.settings.data_dir),
            "SELKIE_PROXY_LISTEN": "0.0.0.0:0",
        }
    )
    public = await make_proxy(settings, db.platform.access)
    assert public.config.require_tls
    opted_out = load_settings(
        environ={**settings_env(settings), "SELKIE_PROXY_ALLOW_PLAINTEXT": "true"}
    )
    assert not (await make_proxy(opted_out, db.platform.access)).config.require_tls
    # What a proxy that requires TLS answers (this one listens on loopback).
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.connector.config = dataclasses.replace(proxy.connector.config, require_tls=True)
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    assert err.value.args[0] == 1045 and "TLS only" in err.value.args[1]
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_ca=str(db.cert))
    conn.close()


def settings_env(settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "SELKIE_DATA_DIR": str(settings.data_dir),
        "SELKIE_PROXY_LISTEN": settings.proxy_listen,
    }


@pytest.mark.parametrize("gap", [None, 0.0, 0.0002, 0.0005, 0.001, 0.002, 0.05])
async def test_a_client_hello_sent_with_the_ssl_request_is_not_lost(
    db: Db, gap: float | None
) -> None:
    """SSLRequest and the TLS ClientHello in one segment: the proxy has read the hello's
    bytes with the request and must hand them to TLS (on either event loop), before the
    rest of the hello when that comes ``gap`` seconds later in a segment of its own (a
    small gap puts it in the socket before the proxy starts TLS)."""

    def run() -> bytes:
        sock, scramble = open_raw(db)
        ctx = ssl.create_default_context(cafile=str(db.cert))
        ctx.check_hostname = False
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing)
        caps = int(PROXY_CAPABILITIES | Capability.SSL) & 0xFFFFFFFF  # the 4 bytes of flags
        ssl_request = caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d"
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        cut = len(hello) if gap is None else 60
        sock.sendall(frame(1, ssl_request + bytes(23))[0] + hello[:cut])
        if gap is not None:
            time.sleep(gap)
            sock.sendall(hello[cut:])
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    sock.sendall(pending)
                incoming.write(sock.recv(65536))
        tls.write(frame(2, valid_response(db, scramble))[0])
        sock.sendall(outgoing.read())
        reply = b""
        while len(reply) < 5:
            try:
                reply += tls.read()
            except ssl.SSLWantReadError:
                incoming.write(sock.recv(65536))
        sock.close()
        return reply

    reply = await asyncio.to_thread(run)
    assert reply[3] == 3 and reply[4] == 0x00, reply  # OK, sequence 3: logged in over TLS


async def disable(db: Db) -> None:
    await db.update_endpoint({"disabled": True})


async def test_disabled_endpoint_is_not_woken(faked: Faked) -> None:
    faked.plane.add_role(faked.endpoint_id, faked.role, faked.password, disabled=True)
    code, message = await asyncio.to_thread(login, faked.proxy, faked.user, faked.password)
    assert code == 1045 and "disabled" in message
    assert faked.plane.woken == []


async def test_a_running_endpoint_once_disabled_takes_no_new_clients(db: Db) -> None:
    conn = await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    conn.close()
    assert db.state() == "active"
    await db.platform.runner.stop()  # its suspend stays queued: the compute keeps running
    await disable(db)
    await asyncio.sleep(1.1)  # the proxy's access cache
    assert db.state() == "active"
    with pytest.raises(pymysql.err.OperationalError) as err:
        await asyncio.to_thread(pymysql_conn, db, ssl_disabled=True)
    assert err.value.args[0] == 1045 and "disabled" in err.value.args[1]


async def test_activity_and_bytes_are_counted_and_reported(db: Db) -> None:
    def run() -> None:
        conn = pymysql_conn(db, ssl_disabled=True)
        with conn.cursor() as cur:
            for _ in range(5):
                cur.execute("SELECT REPEAT('x', 10000)")
                cur.fetchall()
        conn.close()

    t0 = time.time()
    await asyncio.to_thread(run)
    proxy = db.platform.proxy
    assert proxy is not None
    for _ in range(200):  # the relay threads notice the client's close asynchronously
        (item,) = [a for a in proxy.activity() if a.endpoint_id == db.endpoint_id]
        if item.sessions == 0:
            break
        await asyncio.sleep(0.01)
    assert item.sessions == 0 and item.statements >= 5
    assert item.bytes_to_clients > 50_000
    assert item.last_active is not None and item.last_active.timestamp() >= t0 - 1
    await asyncio.sleep(proxy.config.report_interval * 2)
    ep = db.platform.lifecycle.get(db.endpoint_id)
    assert ep.last_active is not None and ep.last_active.timestamp() >= t0 - 1


async def test_cleartext_password_only_over_tls(db: Db) -> None:
    env = {"LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN": "1", "PATH": "/usr/bin:/bin"}

    def cli(*tls: str) -> subprocess.CompletedProcess[str]:
        return mariadb_cli(
            db, "SELECT CURRENT_USER()", "--default-auth=mysql_clear_password", *tls, env=env
        )

    proxy = db.platform.proxy
    assert proxy is not None
    over_tls = await asyncio.to_thread(cli, "--ssl", f"--ssl-ca={db.cert}")
    assert over_tls.returncode == 0, over_tls.stderr
    assert over_tls.stdout.strip() == f"{db.role}@localhost"
    assert proxy.logins["ok:mysql_clear_password"] == 1
    # Without TLS the proxy does not take a cleartext password: it switches the client to
    # mysql_native_password, which this client then uses.
    plain = await asyncio.to_thread(cli, "--ssl=0")
    assert plain.returncode == 0, plain.stderr
    assert proxy.logins["switched:mysql_clear_password"] == 1
    assert proxy.logins["ok:mysql_native_password"] == 1
