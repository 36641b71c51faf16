"""Both plaintext relays, the Python one and the compiled one, on socket pairs: what each
side receives, the counters, COM_CHANGE_USER, the farewell, and the end from outside."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from selkie.proxy.crelay import CRelay, available
from selkie.proxy.relay import Counters, ThreadedRelay
from tests.conftest import need_service

pytestmark = pytest.mark.timeout(30)


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


@dataclass
class Pair:
    relay: ThreadedRelay
    client: socket.socket  # the application's end of the client connection
    server: socket.socket  # the compute's end
    counters: Counters
    done: threading.Event
    done_calls: list[int] = field(default_factory=list)
    change_users: list[bytes] = field(default_factory=list)

    def recv(self, sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def rest(self, sock: socket.socket) -> bytes:
        """Everything until the relay closes its end."""
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


@pytest.fixture(params=["python", "c"])
def relay_cls(request: pytest.FixtureRequest) -> type[ThreadedRelay]:
    if request.param == "python":
        return ThreadedRelay
    if not available():
        need_service("compiled session relay", "selkie.proxy._crelay was not built")
    return CRelay


@pytest.fixture
def start(relay_cls: type[ThreadedRelay]) -> Iterator[Callable[..., Pair]]:
    pairs: list[Pair] = []

    def make(
        change_user: Callable[[bytes], tuple[bytes | None, bytes | None]] | None = None,
        **kw: Any,
    ) -> Pair:
        client_app, client_proxy = socket.socketpair()
        server_proxy, server_app = socket.socketpair()
        for sock in (client_app, server_app):
            sock.settimeout(10)
        done = threading.Event()
        counters = Counters()
        calls: list[int] = []
        seen: list[bytes] = []

        def on_change_user(payload: bytes) -> tuple[bytes | None, bytes | None]:
            seen.append(payload)
            assert change_user is not None
            return change_user(payload)

        def on_done() -> None:
            calls.append(1)
            done.set()

        relay = relay_cls(
            client=client_proxy,
            server=server_proxy,
            counters=counters,
            on_command=lambda _: None,
            on_change_user=on_change_user,
            on_done=on_done,
            farewell=b"<farewell>",
            **kw,
        )
        relay.start()
        pair = Pair(relay, client_app, server_app, counters, done, calls, seen)
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.relay.close()
        pair.client.close()
        pair.server.close()


def test_first_bytes_both_ways_then_commands_and_answers(start: Callable[..., Pair]) -> None:
    first = packet(0, b"\x03SELECT 1")
    p = start(send_to_client=b"<ok>", send_to_server=first)
    assert p.recv(p.client, 4) == b"<ok>"
    assert p.recv(p.server, len(first)) == first
    second = packet(0, b"\x03SELECT 2")
    p.client.sendall(second)
    assert p.recv(p.server, len(second)) == second
    answer = b"x" * 3_000_000  # more than a pipe or a chunk holds
    sender = threading.Thread(target=p.server.sendall, args=(answer,))
    sender.start()
    assert p.recv(p.client, len(answer)) == answer
    sender.join()
    # The first bytes to the client are the login's answer, not relayed traffic. (The relay
    # counts a chunk once it is written: the client may read it a moment before.)
    want = (len(answer), len(first) + len(second), 2)
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline
        and (
            p.counters.bytes_to_client,
            p.counters.bytes_from_client,
            p.counters.statements,
        )
        != want
    ):
        time.sleep(0.001)
    assert p.counters.bytes_to_client == len(answer)
    assert p.counters.bytes_from_client == len(first) + len(second)
    assert p.counters.statements == 2
    # The end keeps the counts (the compiled relay's are folded in from its session).
    p.relay.close()
    assert p.done.wait(5)
    assert (p.counters.bytes_to_client, p.counters.statements) == (len(answer), 2)
    p.counters.bytes_to_client += 10  # as the pooler and SQL over HTTP count
    assert p.counters.bytes_to_client == len(answer) + 10


def test_change_user_is_handed_over_and_rewritten(start: Callable[..., Pair]) -> None:
    p = start(change_user=lambda payload: (packet(0, b"\x11rewritten"), None))
    before, after = packet(0, b"\x03a"), packet(0, b"\x03b")
    change = packet(0, b"\x11bob\x00" + b"t" * 40)
    # One write holding a command, COM_CHANGE_USER cut in two, and the next command.
    p.client.sendall(before + change[:7])
    time.sleep(0.05)
    p.client.sendall(change[7:] + after)
    expected = before + packet(0, b"\x11rewritten") + after
    assert p.recv(p.server, len(expected)) == expected
    assert p.change_users == [b"\x11bob\x00" + b"t" * 40]
    assert p.counters.statements == 3


def test_refused_change_user_ends_the_session_after_its_error(
    start: Callable[..., Pair],
) -> None:
    p = start(change_user=lambda payload: (None, b"<denied>"))
    p.client.sendall(packet(0, b"\x11bob\x00"))
    assert p.rest(p.client) == b"<denied>"
    assert p.done.wait(5)
    assert p.rest(p.server) == b""  # the compute never saw it
    assert p.done_calls == [1]


def test_compute_gone_under_an_idle_session_says_farewell(start: Callable[..., Pair]) -> None:
    p = start()
    p.client.sendall(packet(0, b"\x03SELECT 1"))
    p.recv(p.server, 13)
    p.server.sendall(b"<result>")
    assert p.recv(p.client, 8) == b"<result>"
    p.server.close()
    assert p.rest(p.client) == b"<farewell>"
    assert p.done.wait(5) and p.done_calls == [1]


def test_no_farewell_when_the_compute_runs_on(start: Callable[..., Pair]) -> None:
    """The server ended the session itself (its wait_timeout, a KILL): the client reads
    what the server sent, then a plain close, as from the server directly."""
    asked: list[int] = []
    p = start(compute_gone=lambda: asked.append(1) or False)
    p.client.sendall(packet(0, b"\x03SELECT 1"))
    p.recv(p.server, 13)
    p.server.sendall(b"<its own error>")
    p.server.close()
    assert p.rest(p.client) == b"<its own error>"
    assert p.done.wait(5) and p.done_calls == [1] and asked == [1]


def test_no_farewell_after_the_clients_quit(start: Callable[..., Pair]) -> None:
    p = start()
    p.client.sendall(packet(0, b"\x01"))
    assert p.recv(p.server, 5) == packet(0, b"\x01")
    p.server.close()
    assert p.rest(p.client) == b""
    assert p.done.wait(5) and p.done_calls == [1]


def test_client_leaving_closes_the_compute_side(start: Callable[..., Pair]) -> None:
    p = start()
    p.client.sendall(packet(0, b"\x03x"))
    p.client.close()
    assert p.rest(p.server) == packet(0, b"\x03x")
    assert p.done.wait(5) and p.done_calls == [1]


def test_close_from_outside_ends_both_sides_without_farewell(
    start: Callable[..., Pair],
) -> None:
    p = start()
    time.sleep(0.05)
    p.relay.close()
    p.relay.close()
    assert p.rest(p.client) == b""
    assert p.rest(p.server) == b""
    assert p.done.wait(5)
    time.sleep(0.05)
    assert p.done_calls == [1]
