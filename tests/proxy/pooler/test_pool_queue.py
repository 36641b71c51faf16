"""The backend pool's queue on its own (the pooler tests run it with real computes): first
come first served, hand-over without lost backends when a waiter times out or leaves, and
room made for another kind of backend at the cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from selkie.proxy.pooler.backends import Backend, PoolKey
from selkie.proxy.pooler.pool import EndpointPool, PoolTimeout

K1 = PoolKey(role="app", caps=0, charset=45)
K2 = PoolKey(role="other", caps=0, charset=45)


class _End:
    formatted = 0  # times a backend was formatted (counted: reprlib swallows exceptions)

    def __init__(self) -> None:
        self.closed = False

    def at_eof(self) -> bool:
        return self.closed

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        # A hand-over is on every pooled statement's path: formatting a backend there (as
        # a failed deque.remove does, for its error message) cost a tenth of the pooler.
        _End.formatted += 1
        return "_End()"


def connector(key: PoolKey, made: list[Backend]) -> Any:
    async def connect() -> Backend:
        end = _End()
        backend = Backend(key=key, reader=end, writer=end, stream=None)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    return connect


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_are_served_in_order_by_hand_over() -> None:
    pool = EndpointPool("ep", cap=1, wait_timeout=5)
    made: list[Backend] = []
    first = await pool.acquire(K1, connector(K1, made))
    order: list[str] = []

    async def client(name: str) -> None:
        b = await pool.acquire(K1, connector(K1, made))
        order.append(name)
        await pool.release(b)

    tasks = [asyncio.create_task(client(n)) for n in "BCD"]
    await settle()
    assert pool.waiting == 3 and pool.in_use == 1
    await pool.release(first)
    await asyncio.gather(*tasks)
    assert order == ["B", "C", "D"]
    assert len(made) == 1 and pool.total == 1 and pool.in_use == 0 and pool.waiting == 0
    assert not pool._waiters and _End.formatted == 0
    assert pool.metrics()["backends_idle"] == 1


async def test_a_waiter_times_out_with_nothing_lost() -> None:
    pool = EndpointPool("ep", cap=1, wait_timeout=0.05)
    made: list[Backend] = []
    held = await pool.acquire(K1, connector(K1, made))
    with pytest.raises(PoolTimeout):
        await pool.acquire(K1, connector(K1, made))
    assert pool.waiting == 0 and not pool._waiters
    await pool.release(held)
    assert await pool.acquire(K1, connector(K1, made)) is held


async def test_a_waiter_that_leaves_does_not_take_the_backend_with_it() -> None:
    pool = EndpointPool("ep", cap=1, wait_timeout=5)
    made: list[Backend] = []
    held = await pool.acquire(K1, connector(K1, made))
    leaving = asyncio.create_task(pool.acquire(K1, connector(K1, made)))
    staying = asyncio.create_task(pool.acquire(K1, connector(K1, made)))
    await settle()
    # The backend is handed to the first waiter in the same instant that it is cancelled.
    await pool.release(held)
    leaving.cancel()
    assert await staying is held
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert pool.in_use == 1 and pool.waiting == 0 and len(made) == 1 and not pool._waiters


async def test_at_the_cap_another_kind_gets_room() -> None:
    pool = EndpointPool("ep", cap=1, wait_timeout=5)
    made: list[Backend] = []
    mine = await pool.acquire(K1, connector(K1, made))
    other = asyncio.create_task(pool.acquire(K2, connector(K2, made)))
    await settle()
    assert not other.done()
    await pool.release(mine)  # idle, of a kind nobody waits for: closed to make room
    theirs = await other
    assert theirs.key == K2 and mine.writer.is_closing()
    assert pool.total == 1 and pool.in_use == 1


async def test_a_broken_backend_makes_room_for_a_new_one() -> None:
    pool = EndpointPool("ep", cap=1, wait_timeout=5)
    made: list[Backend] = []
    held = await pool.acquire(K1, connector(K1, made))
    waiting = asyncio.create_task(pool.acquire(K1, connector(K1, made)))
    await settle()
    await pool.release(held, broken=True)
    fresh = await waiting
    assert fresh is not held and len(made) == 2 and pool.total == 1


async def test_a_dead_backend_handed_over_is_replaced_by_its_taker() -> None:
    pool = EndpointPool("ep", cap=1, wait_timeout=5)
    made: list[Backend] = []
    held = await pool.acquire(K1, connector(K1, made))
    first = asyncio.create_task(pool.acquire(K1, connector(K1, made)))
    await settle()
    second = asyncio.create_task(pool.acquire(K1, connector(K1, made)))
    await settle()
    third = asyncio.create_task(pool.acquire(K1, connector(K1, made)))
    await settle()
    await pool.release(held)  # handed to the first waiter …
    held.writer.close()  # … and dead before that waiter runs
    fresh = await first  # it opens a new one in that slot; the second keeps waiting
    assert fresh is not held and not second.done()
    assert pool.total == 1 and pool.in_use == 1 and len(made) == 2
    await pool.release(fresh)
    assert await second is fresh  # still ahead of the third
    assert not third.done()
    await pool.release(fresh)
    assert await third is fresh


async def test_a_backend_released_mid_answer_is_closed_not_handed_over() -> None:
    """Its client left before the response's end: the rest may still come, so neither a
    waiter nor the idle list may get it; the waiter gets a new one in its slot."""
    pool = EndpointPool("ep", cap=1, wait_timeout=5)
    made: list[Backend] = []
    first = await pool.acquire(K1, connector(K1, made))
    waiter = asyncio.create_task(pool.acquire(K1, connector(K1, made)))
    await settle()
    first.answering = True
    await pool.release(first)
    second = await waiter
    assert first.writer.is_closing() and second is not first and len(made) == 2
    assert pool.total == 1 and pool.in_use == 1
    await pool.release(second)
    assert pool.metrics()["backends_idle"] == 1 and pool.in_use == 0
