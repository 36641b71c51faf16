"""What the fast lane owns it gives back: a lane that goes releases the backends and the
parked sessions it held (their references, their sockets unwatched), and park() is told
what it needs by name."""

from __future__ import annotations

import gc
import os
import socket
import sys
from collections.abc import Iterator

import pytest

from selkie.proxy.pooler import lane

if not lane.available():
    if os.environ.get("CI") == "true":
        raise RuntimeError("the pooler's fast lane (_lane.c) is not built")
    pytest.skip("the fast lane is not built here", allow_module_level=True)

from selkie.proxy.pooler._lane import Conn, Lane, Session


class Backend:
    """Stands for the pool's Backend: the lane only holds it."""


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def new_lane() -> Lane:
    return Lane(lambda b: None, lambda b: None, 5.0)


def test_a_lane_that_goes_releases_its_idle_backends(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = Conn(Backend(), pair[0].fileno())
    before = sys.getrefcount(conn)
    lanes = [new_lane()]
    lanes[0].give(conn, 0, 0, [(1, 7, None)])
    assert lanes[0].idle == 1
    assert sys.getrefcount(conn) == before + 1  # the lane's
    del lanes[0]
    assert sys.getrefcount(conn) == before


def test_a_lane_that_goes_releases_its_parked_sessions_and_their_backends(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = socket.socketpair()
    try:
        woken: list[tuple[object, ...]] = []
        session = Session(lambda *args: woken.append(args))
        conn = Conn(Backend(), pair[0].fileno())
        session_refs, conn_refs = sys.getrefcount(session), sys.getrefcount(conn)
        lanes = [new_lane()]
        lanes[0].park(
            session,
            fd=client.fileno(),
            key=0,
            sig=0,
            statements=[(1, 0, 0, None, True)],
            conn=conn,
            conn_sig=0,
            conn_statements=[],
        )
        assert session.parked and session.backend is conn.backend
        del lanes[0]
        gc.collect()
        assert not session.parked
        assert sys.getrefcount(session) == session_refs
        assert sys.getrefcount(conn) == conn_refs
        assert woken == []  # nobody is left to hear of it
    finally:
        client.close()
        server.close()


def test_a_lane_in_a_cycle_is_collected_with_what_it_holds(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    class Owner:
        """Holds its lane, whose callbacks are its methods: a cycle only a collection ends."""

        def __init__(self) -> None:
            self.lane = Lane(self.released, self.released, 5.0)

        def released(self, backend: object) -> None:
            pass

    owner = Owner()
    conn = Conn(Backend(), pair[0].fileno())
    before = sys.getrefcount(conn)
    owner.lane.give(conn, 0, 0, [])
    assert sys.getrefcount(conn) == before + 1
    del owner
    gc.collect()
    assert sys.getrefcount(conn) == before


def test_park_takes_its_arguments_by_name(pair: tuple[socket.socket, socket.socket]) -> None:
    lane_ = new_lane()
    session = Session(lambda *args: None)
    with pytest.raises(TypeError):
        lane_.park(session, pair[0].fileno(), 0, 0, [])  # type: ignore[misc]
    with pytest.raises(TypeError, match="needs fd"):
        lane_.park(session, key=0, sig=0, statements=[])  # type: ignore[call-arg]
    assert not session.parked
