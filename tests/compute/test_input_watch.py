"""The frozen compute's input watch, on a real process's sockets (taken with pidfd_getfd):
a client's statement wakes, a client leaving (EOF, or a COM_QUIT the server never read)
does not."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from selkie.compute.warm import COM_QUIT, InputWatch

SERVER = """
import socket, sys, time
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conns = [srv.accept()[0] for _ in range(int(sys.argv[1]))]
print("ready", flush=True)
time.sleep(60)
"""


def _server(clients: int) -> tuple[subprocess.Popen[str], list[socket.socket]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(clients)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    assert proc.stdout.readline().strip() == "ready"
    return proc, socks


async def _fires(watch_pid: int, act) -> bool:  # type: ignore[no-untyped-def]
    fired = asyncio.Event()
    watch = InputWatch(watch_pid, fired.set)
    try:
        watch.start()
    except OSError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"pidfd_getfd not allowed here: {exc}")
    try:
        act()
        try:
            await asyncio.wait_for(fired.wait(), 0.5)
        except TimeoutError:
            return False
        return True
    finally:
        watch.close()


async def test_a_statement_wakes_and_a_leaving_client_does_not() -> None:
    proc, (quitting, closing, asking) = _server(3)
    try:
        assert not await _fires(proc.pid, lambda: quitting.sendall(COM_QUIT))
        assert not await _fires(proc.pid, closing.close)
        query = b"\x09\x00\x00\x00\x03SELECT 1"
        assert await _fires(proc.pid, lambda: asking.sendall(query))
    finally:
        proc.kill()
        proc.wait()
        for s in (quitting, asking):
            s.close()
