"""The background-task helpers."""

from __future__ import annotations

import asyncio

from selkie.tasks import cancel, spawn


async def test_cancel_does_not_swallow_the_callers_own_cancellation() -> None:
    """A task cancelled while it waits in cancel() for another task stops, instead of
    carrying on (a safekeeper stream once looped on after its detach this way)."""
    inner_started = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        inner_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # takes its time to stop
            raise

    carried_on = False

    async def outer() -> None:
        nonlocal carried_on
        inner = spawn(stubborn(), name="inner")
        await inner_started.wait()
        await cancel(inner)
        carried_on = True

    task = spawn(outer(), name="outer")
    await inner_started.wait()
    await asyncio.sleep(0.01)  # outer is now waiting in cancel(inner)
    task.cancel()
    release.set()
    await asyncio.wait({task})
    assert task.cancelled()
    assert not carried_on


async def test_cancel_ends_a_task() -> None:
    task = spawn(asyncio.sleep(3600), name="sleeper")
    await cancel(task)
    assert task.cancelled()
    await cancel(task)  # done: nothing to do
    await cancel(None)


async def test_cancel_sends_a_swallowed_cancellation_again() -> None:
    rounds = 0

    async def swallows_once() -> None:
        nonlocal rounds
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                rounds += 1
                if rounds == 1:
                    continue  # as wait_for on Python 3.11 may, now and then
                raise

    task = spawn(swallows_once(), name="swallower")
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel(task), 5)
    assert task.cancelled() and rounds == 2
