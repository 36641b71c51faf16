"""Which asyncio event loop Selkie runs on.

uvloop (libuv) is the default where it is installed: the proxy and the pooler spend most of
their time in the event loop's socket paths, and uvloop's are several times cheaper than
the standard library's (see docs/benchmarks.md). ``asyncio`` keeps the standard loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def _have_uvloop() -> bool:
    # Looked up, not imported: every command loads the settings, which check this.
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """The loop ``choice`` means here: ``auto`` is uvloop when it is installed."""
    if choice not in CHOICES:
        raise ValueError(f"event_loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "uvloop" if _have_uvloop() else "asyncio"
    if choice == "uvloop" and not _have_uvloop():
        raise ValueError("event_loop is 'uvloop' but uvloop is not installed")
    return choice


def factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of the chosen kind."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=factory(choice)) as runner:
        return runner.run(main)
