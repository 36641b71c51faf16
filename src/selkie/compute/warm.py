"""Warm suspend of a local compute: frozen by the cgroup freezer, thawed in about a
millisecond.

Before a freeze the server gives back what is cheap to rebuild: its buffer pool shrinks to
``WARM_POOL_BYTES`` (MariaDB 10.11 returns the freed chunks to the kernel), so a frozen
compute holds little more than the server's own code and caches. After the thaw the pool
grows back in the background; pages come back from the page cache or disk as they are read.

A frozen server cannot answer, yet its sockets stay open and the kernel still queues what
clients send it: a session that was idle when its compute froze sends its next statement
into the socket's receive queue. :class:`InputWatch` sees that at once, so the control
plane can thaw the compute (a new connection, through the proxy or around it, shows up the
same way: in a listening socket's accept queue).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from selkie.compute.mariadb import MIB
from selkie.errors import ComputeError

log = logging.getLogger(__name__)

Execute = Callable[[str, Sequence[str]], Awaitable[list[list[tuple[Any, ...]]]]]

# The buffer pool a frozen compute keeps. InnoDB rounds it up to whole chunks (which the
# server sizes from the pool it started with: 1/64 of it), so the pool lands at a few MiB.
WARM_POOL_BYTES = 8 * MIB
# How long a freeze waits for InnoDB to finish shrinking the pool before freezing anyway.
SHRINK_TIMEOUT = 5.0
# pidfd_getfd(2) (Linux 5.6): not in Python's os module.
_SYS_PIDFD_GETFD = 438


async def shrink_pool(execute: Execute, endpoint_id: str, *, to_bytes: int) -> None:
    """Shrink the server's buffer pool and wait (bounded) until InnoDB has released it."""
    await execute(endpoint_id, [f"SET GLOBAL innodb_buffer_pool_size = {to_bytes}"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHRINK_TIMEOUT
    while loop.time() < deadline:
        ((row,),) = await execute(
            endpoint_id,
            [
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                "WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_RESIZE_STATUS'"
            ],
        )
        status = str(row[0]) if row else ""
        if not status or status.startswith("Completed") or "complete" in status.lower():
            return
        await asyncio.sleep(0.005)
    log.warning("compute %s: the buffer pool was still shrinking when it froze", endpoint_id)


# Seconds after a thaw before the buffer pool grows back.
GROW_DELAY = 1.0


async def grow_pool(
    execute: Execute, endpoint_id: str, *, to_bytes: int, delay: float = GROW_DELAY
) -> None:
    """Give a thawed server its buffer pool back (InnoDB grows it in the background), after
    ``delay`` seconds: the wake's first statements go first (a resize takes the pool's
    locks now and then, which held up logins right after a thaw by up to ~100 ms)."""
    await asyncio.sleep(delay)
    try:
        await execute(endpoint_id, [f"SET GLOBAL innodb_buffer_pool_size = {to_bytes}"])
    except ComputeError as exc:
        log.warning("compute %s keeps a small buffer pool for now: %s", endpoint_id, exc)


# A whole COM_QUIT packet (length 1, sequence 0, command 0x01): what a leaving client sends.
COM_QUIT = b"\x01\x00\x00\x00\x01"


class InputWatch:
    """Watches a frozen compute's sockets for a client waiting on it, without polling.

    Each socket the server holds (its listening sockets, its client connections) is
    duplicated into this process with ``pidfd_getfd`` and watched on the event loop: a
    pending connection or unread bytes call ``on_input`` once. A connection whose peer
    closed is only unwatched (a client leaving needs no server)."""

    def __init__(self, pid: int, on_input: Callable[[], None]) -> None:
        self.pid = pid
        self.on_input = on_input
        self._socks: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fired = False

    def start(self) -> None:
        """Take and watch the sockets. Raises OSError where the kernel does not let us."""
        self._loop = asyncio.get_running_loop()
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(self.pid)
        try:
            for entry in Path(f"/proc/{self.pid}/fd").iterdir():
                try:
                    if not os.readlink(entry).startswith("socket:"):
                        continue
                except OSError:
                    continue
                fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(entry.name), 0)
                if fd < 0:
                    err = ctypes.get_errno()
                    self.close()
                    raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
                sock = socket.socket(fileno=fd)
                self._socks[fd] = sock
                self._loop.add_reader(fd, self._readable, fd)
        finally:
            os.close(pidfd)

    def _readable(self, fd: int) -> None:
        sock = self._socks.get(fd)
        if sock is None or self._fired:
            return
        try:
            data = sock.recv(len(COM_QUIT) + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b"!"  # a listening socket: a connection is waiting
        if not data or data == COM_QUIT:
            # The peer left, or is leaving: a COM_QUIT the server had not read yet when it
            # froze (a connection of Selkie's own closing just then, often). Nobody waits.
            self._drop(fd)
            return
        self._fired = True
        self.close()
        self.on_input()

    def _drop(self, fd: int) -> None:
        sock = self._socks.pop(fd, None)
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            sock.close()

    def close(self) -> None:
        for fd in list(self._socks):
            self._drop(fd)
