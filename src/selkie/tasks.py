"""Background asyncio tasks start here, never bare: a task that dies is logged, not lost
(kopf's aiotasks.guard)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
_running: set[asyncio.Task[Any]] = set()
RECANCEL_SECONDS = 0.5
T = TypeVar("T")


def spawn(coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
    """Run ``coro`` in the background; log it if it fails; keep a reference until done."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)

    def _done(t: asyncio.Task[Any]) -> None:
        _running.discard(t)
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.error("background task %s died", name, exc_info=exc)

    task.add_done_callback(_done)
    return task


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait until it has finished. A cancellation the task swallowed (on
    Python 3.11 ``asyncio.wait_for`` can, when what it waits for completes at that moment)
    is sent again; a cancellation of the caller while it waits goes on up."""
    if task is None or task.done():
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "task %s failed while being cancelled", task.get_name(), exc_info=task.exception()
        )


class SharedTasks(Generic[T]):
    """One running task per key, shared by every caller that asks while it runs (one start
    per endpoint for a storm of wakes). A caller that gives up, by its own timeout, does
    not cancel the task for the others."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        task = self._tasks.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(factory())
            self._tasks[key] = task

            def done(t: asyncio.Task[T]) -> None:
                if self._tasks.get(key) is t:
                    del self._tasks[key]
                if not t.cancelled():
                    t.exception()  # retrieved here; every waiter re-raises it

            task.add_done_callback(done)
        return await asyncio.shield(task)
