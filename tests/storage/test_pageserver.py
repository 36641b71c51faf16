"""Pageserver storage mode, tested as far as it can be without the patched MariaDB: the
options rendered for the compute, and the preflight ping that refuses to start a compute
whose page server does not answer. Starting a real page-server compute needs the patched
mariadbd (SELKIE_PAGESERVER_MARIADBD); stock MariaDB rejects the options, which the last
test shows by checking that they reach the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from selkie.compute.mariadb import Sizing, render_config
from selkie.errors import ComputeError, StorageError
from selkie.model import EndpointState, ProjectSettings, StorageMode
from selkie.platform import Platform
from selkie.storage.pageserver import page_server_options
from tests.helpers import free_port

SETTINGS = ProjectSettings(
    storage_mode=StorageMode.PAGESERVER,
    page_server_address="127.0.0.1",
    page_server_port=6400,
    safekeeper_url="http://127.0.0.1:7676",
)


def test_options_and_rendered_config() -> None:
    options = page_server_options(SETTINGS)
    assert options == {
        "innodb_page_server_enabled": "ON",
        "innodb_page_server_address": "127.0.0.1",
        "innodb_page_server_port": "6400",
        "innodb_safekeeper_url": "http://127.0.0.1:7676",
    }
    cnf = render_config(
        sizing=Sizing.for_cu(1),
        datadir=Path("/d"),
        socket=Path("/s"),
        port=1234,
        pid_file=Path("/p"),
        error_log=Path("/e"),
        extra=options,
    )
    lines = cnf.splitlines()
    assert lines[1] == "[mariadbd]"
    for key, value in options.items():
        assert f"{key}={value}" in lines
    with pytest.raises(StorageError, match="page_server_address"):
        page_server_options(ProjectSettings(storage_mode=StorageMode.PAGESERVER))


@pytest.fixture
def ping_server() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            code = 200 if self.path == "/api/v1/ping" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"pong")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], hits
    server.shutdown()


async def test_no_page_server_fails_the_start_with_a_clear_error(platform: Platform, who) -> None:  # type: ignore[no-untyped-def]
    dead = free_port()
    created = await asyncio.to_thread(
        platform.control.projects.create,
        who,
        name="ps",
        settings={
            "storage_mode": "pageserver",
            "page_server_address": "127.0.0.1",
            "page_server_port": dead,
        },
    )
    with pytest.raises(StorageError, match=f"page server 127.0.0.1:{dead} does not answer"):
        await platform.lifecycle.start(created.endpoints[0].id)
    ep = platform.lifecycle.get(created.endpoints[0].id)
    assert ep.current_state is EndpointState.FAILED
    assert ep.failure_reason and "does not answer" in ep.failure_reason
    assert not (await platform.driver.inspect(ep.id)).running


async def test_options_reach_the_server(platform: Platform, who, ping_server) -> None:  # type: ignore[no-untyped-def]
    port, hits = ping_server
    created = await asyncio.to_thread(
        platform.control.projects.create,
        who,
        name="ps2",
        settings={
            "storage_mode": "pageserver",
            "page_server_address": "127.0.0.1",
            "page_server_port": port,
            "safekeeper_url": "http://127.0.0.1:1",
        },
    )
    with pytest.raises(ComputeError) as err:
        await platform.lifecycle.start(created.endpoints[0].id)
    assert "/api/v1/ping" in hits
    # Stock MariaDB does not know the patched server's options: proof they were passed.
    assert "innodb_page_server" in str(err.value) or "innodb-page-server" in str(err.value)
    cnf = (platform.driver.run_dir(created.endpoints[0].id) / "my.cnf").read_text()
    assert f"innodb_page_server_port={port}" in cnf
    assert "datadir=" in cnf and "/scratch/" in cnf
