"""The compiled relay: its scanner agrees with CommandScanner however a stream is cut, and
real clients' plaintext sessions run on it (COM_CHANGE_USER included)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selkie.mysql.wire import MAX_PAYLOAD
from selkie.proxy import crelay
from selkie.proxy.relay import CommandScanner, HeldChangeUser
from tests.conftest import need_service
from tests.proxy.conftest import Db
from tests.proxy.test_clients import connector, pymysql_conn

Scanned = tuple[bytes, list[tuple[int, bytes]], list[int]]


@pytest.fixture(autouse=True)
def _built() -> None:
    # Under CI=true a missing extension fails: the compiled relay must be the one in use.
    if not crelay.available():
        need_service("compiled session relay", "selkie.proxy._crelay was not built")


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def scan_python(chunks: list[bytes]) -> Scanned:
    """Forwarded bytes, (offset in them, payload) of each held COM_CHANGE_USER, commands."""
    scanner = CommandScanner()
    out, held, commands = b"", [], []
    for chunk in chunks:
        segments, cmds = scanner.feed(chunk)
        for s in segments:
            if isinstance(s, HeldChangeUser):
                held.append((len(out), s.payload))
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
                held.append((len(out), data))
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
            st.sampled_from([b"", b"\x03SELECT 1", b"\x0e", b"\x11bob\x00", b"\x16x", b"\x01"]),
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
