"""The compiled relay: its scanner agrees with CommandScanner however a stream is cut, its
loop takes empty bytes and failed adds without harm, a refused COM_CHANGE_USER is answered
through the loop, and real clients' plaintext sessions run on it (COM_CHANGE_USER
included)."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selkie.mysql.wire import MAX_PAYLOAD
from selkie.proxy import crelay
from selkie.proxy.relay import CommandScanner, Counters, HeldChangeUser, HeldKill
from tests.conftest import need_service
from tests.proxy.conftest import Db
from tests.proxy.test_clients import connector, pymysql_conn

Scanned = tuple[bytes, list[tuple[int, int, bytes]], list[int]]


@pytest.fixture(autouse=True)
def _built() -> None:
    # Under CI=true a missing extension fails: the compiled relay must be the one in use.
    if not crelay.available():
        need_service("compiled session relay", "selkie.proxy._crelay was not built")


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def scan_python(chunks: list[bytes]) -> Scanned:
    """Forwarded bytes, (offset in them, kind, payload) of each held COM_CHANGE_USER (1) or
    KILL (2), commands."""
    scanner = CommandScanner()
    out, held, commands = b"", [], []
    for chunk in chunks:
        segments, cmds = scanner.feed(chunk)
        for s in segments:
            if isinstance(s, HeldChangeUser | HeldKill):
                held.append((len(out), 1 if isinstance(s, HeldChangeUser) else 2, s.payload))
            else:
                out += s
        commands += cmds
    return out, held, commands


def scan_c(chunks: list[bytes]) -> Scanned:
    from selkie.proxy._crelay import Session  # here: the module may not be built

    session = Session()
    out, held, commands = b"", [], []
    for chunk in chunks:
        segments, cmds = session.feed(chunk)
        for kind, data in segments:
            if kind:
                held.append((len(out), kind, data))
            else:
                out += data
        commands += cmds
    return out, held, commands


def cut(stream: bytes, sizes: list[int]) -> list[bytes]:
    pieces, i, k = [], 0, 0
    while i < len(stream):
        pieces.append(stream[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return pieces


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 0, 0, 1, 2, 254, 255]),
            st.sampled_from(
                [
                    b"",
                    b"\x03SELECT 1",
                    b"\x0e",
                    b"\x11bob\x00",
                    b"\x16x",
                    b"\x01",
                    b"\x03KILL QUERY 2147483650",
                    b"\x03kill\t7",
                    b"\x03KILLER",
                    b"\x03" + b"x" * 79,
                    b"\x03KILL " + b"9" * 80,
                ]
            ),
        ),
        max_size=14,
    ),
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
)
def test_c_scanner_agrees_with_command_scanner(
    packets: list[tuple[int, bytes]], sizes: list[int]
) -> None:
    stream = b"".join(packet(seq, payload) for seq, payload in packets)
    whole = [packet(seq, payload) for seq, payload in packets]
    expected = scan_python(whole)
    assert scan_c(whole) == expected
    assert scan_c(cut(stream, sizes)) == expected
    assert scan_c([stream]) == expected


def test_c_scanner_ignores_continuations_of_a_16_mib_packet() -> None:
    big_first = b"\xff\xff\xff\x00" + b"\x03" + b"a" * (MAX_PAYLOAD - 1)
    stream = (
        packet(0, b"\x03x")
        + packet(0, b"\x11bob\x00")
        + big_first
        + packet(1, b"\x11not-a-command")
        + packet(0, b"\x01")
    )
    for size in (len(stream), 65536, 7):
        pieces = cut(stream, [size]) if size > 1000 else cut(stream[:200], [size])
        assert scan_c(pieces) == scan_python(pieces), size
    assert scan_c([stream])[2] == [0x03, 0x11, 0x03, 0x01]


def running_loop():  # type: ignore[no-untyped-def]
    from selkie.proxy._crelay import Loop

    loop = Loop()
    threading.Thread(target=loop.run, name="test-relay-loop", daemon=True).start()
    return loop


def wait_for(check, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return bool(check())


def test_empty_bytes_are_taken_everywhere() -> None:
    # Empty bytes into a buffer never allocated: a memcpy into NULL, undefined behaviour
    # that `make sanitize` (UBSan, halt_on_error) turns into a failure.
    from selkie.proxy._crelay import END_CLIENT, Session

    loop = running_loop()
    session = Session()
    app, proxy_end = socket.socketpair()
    server_app, server_end = socket.socketpair()
    ends: list[tuple[int, object]] = []
    loop.add(
        session,
        proxy_end.fileno(),
        server_end.fileno(),
        b"",
        b"",
        b"",
        lambda end, value: ends.append((end, value)),
    )
    app.sendall(packet(0, b"\x03SELECT 1"))
    server_app.settimeout(10)
    assert server_app.recv(100) == packet(0, b"\x03SELECT 1")
    app.close()
    assert wait_for(lambda: ends == [(END_CLIENT, None)]), ends
    for s in (proxy_end, server_app, server_end):
        s.close()


def test_a_failed_add_keeps_neither_handler_nor_session(tmp_path: Path) -> None:
    # epoll refuses regular files: the first add fails, or the second after the first
    # succeeded. Neither may keep the handler (a Session holds it for good: it is not
    # collected), call it, or let the loop release the session (a second time).
    from selkie.proxy._crelay import Loop, Session

    called: list[object] = []

    def handler(end: int, value: object) -> None:
        called.append((end, value))

    file = (tmp_path / "f").open("w")
    pair = socket.socketpair()
    loop = Loop()  # not running: what a failed add keeps stays visible
    for client_fd in (file.fileno(), pair[0].fileno()):
        session = Session()
        handlers, sessions = sys.getrefcount(handler), sys.getrefcount(session)
        with pytest.raises(OSError):
            loop.add(session, client_fd, file.fileno(), b"x", b"", b"", handler)
        assert sys.getrefcount(handler) == handlers
        assert sys.getrefcount(session) >= sessions  # kept by the loop for one batch at most
    running = running_loop()
    for _ in range(200):  # a client gone already: the loop would end the session at once
        session = Session()
        app, proxy_end = socket.socketpair()
        app.close()
        sessions = sys.getrefcount(session)
        with pytest.raises(OSError):
            running.add(session, proxy_end.fileno(), file.fileno(), b"", b"", b"", handler)
        assert sys.getrefcount(session) >= sessions
        proxy_end.close()
    time.sleep(0.1)
    assert called == []
    file.close()
    for s in pair:
        s.close()


def test_a_refused_change_user_is_answered_through_the_loop() -> None:
    # The client reads nothing: its socket is full. The ERR waits in the loop, not in a
    # thread blocked on a send, and reaches the client once it reads; then the session ends.
    from selkie.proxy._crelay import Session

    err = packet(1, b"\xff\x15\x04#28000Access denied")
    app, proxy_end = socket.socketpair()
    server_app, server_end = socket.socketpair()
    proxy_end.setblocking(False)
    filler = 0
    try:
        while True:
            filler += proxy_end.send(b"f" * 65536)
    except BlockingIOError:
        pass
    asked: list[bytes] = []
    done = threading.Event()

    def on_change_user(payload: bytes) -> tuple[bytes | None, bytes | None]:
        asked.append(payload)
        return None, err

    relay = crelay.CRelay(
        client=proxy_end,
        server=server_end,
        counters=Counters(),
        on_command=lambda _: None,
        on_change_user=on_change_user,
        on_done=done.set,
    )
    relay.start()
    assert isinstance(relay._session, Session)
    app.sendall(packet(0, b"\x11bob\x00"))
    assert wait_for(lambda: asked == [b"\x11bob\x00"])
    assert wait_for(lambda: "relay-change-user" not in relay_threads(), 2.0), relay_threads()
    assert not done.is_set()  # the ERR is still to be read
    got = b""
    app.settimeout(10)
    while chunk := app.recv(1 << 20):
        got += chunk
    assert got == b"f" * filler + err
    assert done.wait(5)
    for s in (app, server_app):
        s.close()


def relay_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("relay-")]


async def test_plaintext_sessions_run_on_the_compiled_relay(db: Db) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    assert proxy.passthrough.relay_class is crelay.CRelay

    def session() -> tuple[list[str], int, int, tuple[object, ...]]:
        conn = pymysql_conn(db, ssl_disabled=True)  # PyMySQL takes TLS when offered
        try:
            with conn.cursor() as cur:
                for i in range(20):
                    cur.execute("SELECT %s", (i,))
                threads = relay_threads()
                # The activity reporter reads the live counters through to the C session.
                live = proxy.stats[db.endpoint_id].live
                statements = sum(c.statements for c in live)
                to_client = sum(c.bytes_to_client for c in live)
                cur.execute("SELECT REPEAT('x', 1000000)")
                row = cur.fetchone()
                return threads, statements, to_client, (len(row[0]),)
        finally:
            conn.close()

    threads, statements, to_client, row = await asyncio.to_thread(session)
    assert threads == ["relay-loop"]
    assert statements >= 20 and to_client > 0
    assert row == (1_000_000,)
    for _ in range(100):  # the session's end reaches the proxy's stats
        if not proxy.stats[db.endpoint_id].sessions:
            break
        await asyncio.sleep(0.02)
    assert proxy.stats[db.endpoint_id].sessions == 0
    assert proxy.stats[db.endpoint_id].statements >= 22
    assert proxy.stats[db.endpoint_id].bytes_to_clients > 1_000_000


async def test_change_user_on_the_compiled_relay(db: Db) -> None:
    def run() -> tuple[list[str], str, str]:
        cnx = connector(db)
        try:
            cur = cnx.cursor()
            cur.execute("SET @marker = 42")
            cnx.cmd_change_user(username=db.user, password=db.password, database=db.database)
            cur = cnx.cursor()
            cur.execute("SELECT CURRENT_USER(), @marker")
            user, marker = cur.fetchone()
            return relay_threads(), user, str(marker)
        finally:
            cnx.close()

    threads, user, marker = await asyncio.to_thread(run)
    assert threads == ["relay-loop"]
    assert user == f"{db.role}@localhost"
    assert marker == "None"  # a changed user starts a fresh session
