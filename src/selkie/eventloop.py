"""Which asyncio event loop Selkie runs on.

uvloop (libuv) is the default where it is installed: the proxy and the pooler spend most of
their time in the event loop's socket paths, and uvloop's are several times cheaper than
the standard library's (see docs/benchmarks.md). ``asyncio`` keeps the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def _uvloop() -> Any | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def resolve(choice: str) -> str:
    """The loop ``choice`` means here: ``auto`` is uvloop when it can be imported."""
    if choice not in CHOICES:
        raise ValueError(f"event_loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "uvloop" if _uvloop() is not None else "asyncio"
    if choice == "uvloop" and _uvloop() is None:
        raise ValueError("event_loop is 'uvloop' but uvloop is not installed")
    return choice


def factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of the chosen kind."""
    if resolve(choice) == "uvloop":
        return _uvloop().new_event_loop  # type: ignore[no-any-return, union-attr]
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=factory(choice)) as runner:
        return runner.run(main)
