"""The configured event loop is the one the servers and the tests run on."""

from __future__ import annotations

import asyncio
import os

import pytest

from selkie import eventloop
from selkie.config import load_settings
from selkie.errors import ConfigError


async def test_the_tests_run_on_the_configured_loop() -> None:
    want = eventloop.resolve(os.environ.get("SELKIE_EVENT_LOOP", "auto"))
    loop = type(asyncio.get_running_loop())
    assert (loop.__module__.split(".")[0] == "uvloop") == (want == "uvloop"), loop


def test_run_uses_the_chosen_loop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert eventloop.run(which(), "asyncio") == "asyncio"
    assert eventloop.run(which(), "uvloop") == "uvloop"
    assert eventloop.resolve("auto") == "uvloop"  # a dependency of the package


def test_a_bad_choice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="event_loop must be one of"):
        load_settings(environ={"SELKIE_EVENT_LOOP": "twisted"})
