"""The session relay: bytes between an authenticated client and its compute, as cheaply as
the kernel allows.

Server → client carries the bulk (result sets). For plaintext sessions it is moved by a
thread calling ``os.splice`` through a pipe: the bytes never enter Python. Client → server
is small (commands) and is scanned, not parsed: a packet with sequence id 0 starts a
command, whose first byte is noted for activity tracking; ``COM_CHANGE_USER`` is the one
command the proxy must rewrite (its token answers the proxy's scramble, not the compute's).
TLS sessions use the same scanner on the event loop (a TLS stream cannot be spliced).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from selkie.mysql.wire import MAX_PAYLOAD, Command
from selkie.proxy.sessions import KILL_MAX, may_kill

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# How long the farewell to a client whose compute went away may take to send (the client is
# idle: its socket buffer is empty).
FAREWELL_SEND_TIMEOUT = 1.0


class LiveCounts(Protocol):
    """Counts kept elsewhere while a session runs there (the compiled relay's session)."""

    @property
    def bytes_to_client(self) -> int: ...
    @property
    def bytes_from_client(self) -> int: ...
    @property
    def statements(self) -> int: ...
    @property
    def last_active(self) -> float: ...


class Counters:
    """What one session did (read by the proxy's activity reporter). While the compiled
    relay runs a session its counts live there (:meth:`attach`) and are read through."""

    def __init__(self) -> None:
        self._to_client = 0
        self._from_client = 0
        self._statements = 0
        self._last_active = time.time()
        self._live: LiveCounts | None = None

    @property
    def bytes_to_client(self) -> int:
        live = self._live
        return self._to_client + (live.bytes_to_client if live else 0)

    @bytes_to_client.setter
    def bytes_to_client(self, value: int) -> None:
        live = self._live
        self._to_client = value - (live.bytes_to_client if live else 0)

    @property
    def bytes_from_client(self) -> int:
        live = self._live
        return self._from_client + (live.bytes_from_client if live else 0)

    @property
    def statements(self) -> int:
        live = self._live
        return self._statements + (live.statements if live else 0)

    @property
    def last_active(self) -> float:
        live = self._live
        return max(self._last_active, live.last_active) if live else self._last_active

    def client_sent(self, nbytes: int, commands: int) -> None:
        """The client sent ``nbytes`` holding the start of ``commands`` commands."""
        self._from_client += nbytes
        if commands:
            self._statements += commands
            self._last_active = time.time()

    def attach(self, live: LiveCounts) -> None:
        """Read ``live``'s counts on top of these until :meth:`detach`."""
        self._live = live

    def detach(self) -> None:
        """Keep the live counts as they are now, and let go of what kept them. One attribute
        is swapped, so a reader on another thread never sees them counted twice or not at
        all (a dip would read as a counter reset)."""
        live = self._live
        if live is not None:
            self._live = _Counts(
                live.bytes_to_client, live.bytes_from_client, live.statements, live.last_active
            )


@dataclass(frozen=True)
class _Counts:
    bytes_to_client: int
    bytes_from_client: int
    statements: int
    last_active: float


@dataclass(frozen=True)
class HeldChangeUser:
    """A whole COM_CHANGE_USER payload, held back from the byte stream for rewriting."""

    payload: bytes


@dataclass(frozen=True)
class HeldKill:
    """A whole COM_QUERY payload that ``sessions.may_kill``: held back for the proxy to map
    the session id it names (sessions.py)."""

    payload: bytes


Segment = bytes | HeldChangeUser | HeldKill


def _held(command: int, length: int) -> bool:
    """Whether a command is held until it is whole: a COM_CHANGE_USER, or a COM_QUERY short
    enough to be a KILL the proxy reads."""
    return command == Command.CHANGE_USER or (command == Command.QUERY and length <= KILL_MAX)


class CommandScanner:
    """Finds command boundaries in the client → server byte stream without buffering it.

    A packet with sequence id 0 that does not continue a 16 MiB split starts a command; its
    first payload byte is the command. One that follows a packet with sequence id 255 may
    not: sequence ids wrap only inside one exchange, in practice the file a client sends for
    ``LOAD DATA LOCAL INFILE`` (its data packets count on from 2 and pass 255 every 256
    packets; a data packet must never be taken for a command, least of all for a
    COM_CHANGE_USER). But a packet with sequence id 255 that ends the client's turn, the
    empty packet that ends the file (not the empty piece that ends a split 16 MiB data
    packet) or a command's last piece, is followed by a command: it must be seen too.
    ``feed`` returns the segments to forward, in order (bytes, or a :class:`HeldChangeUser`
    or :class:`HeldKill` for the caller to rewrite), and the commands seen. A COM_QUERY of at
    most ``KILL_MAX`` bytes is held until it is whole to see whether it is a KILL.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0
        self._continued = False
        self._in_command = False  # the logical packet being read is a command's
        self._wraps = False  # the next packet continues the exchange past sequence 255
        self._pending_header: bytes | None = None
        self._held: bytearray | None = None
        self._held_header = b""  # a held COM_QUERY's header, forwarded if it is no KILL

    def feed(self, data: bytes) -> tuple[list[Segment], list[int]]:
        # The usual case, first: nothing half-read, and ``data`` is exactly one whole packet
        # (a client sends a command and waits). It is passed on as it is, without copying.
        n = len(data)
        if (
            n >= 4
            and not self._header
            and not self._remaining
            and self._pending_header is None
            and self._held is None
        ):
            length = data[0] | data[1] << 8 | data[2] << 16
            if length + 4 == n:
                seq = data[3]
                starts = seq == 0 and not self._continued and not self._wraps
                if not (starts and length and _held(data[4], length)):
                    self._header_read(seq, length, starts)
                    return [data], [data[4]] if starts and length else []
                if data[4] == Command.QUERY and not may_kill(data[4:]):
                    self._header_read(seq, length, starts)
                    return [data], [data[4]]
        return self._feed(data)

    def _feed(self, data: bytes) -> tuple[list[Segment], list[int]]:
        segments: list[Segment] = []
        commands: list[int] = []
        buf = bytearray()
        pos, n = 0, len(data)
        while pos < n:
            if self._held is not None:
                take = min(self._remaining, n - pos)
                self._held += data[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    payload = bytes(self._held)
                    self._held = None
                    if payload[0] == Command.QUERY and not may_kill(payload):
                        buf += self._held_header + payload  # no KILL: on its way as it came
                        continue
                    if buf:
                        segments.append(bytes(buf))
                        buf.clear()
                    held = HeldChangeUser if payload[0] == Command.CHANGE_USER else HeldKill
                    segments.append(held(payload))
                continue
            if self._pending_header is not None:
                command = data[pos]
                commands.append(command)
                if _held(command, self._remaining):
                    self._held = bytearray()
                    self._held_header = self._pending_header
                else:
                    buf += self._pending_header
                self._pending_header = None
                continue
            if self._remaining:
                take = min(self._remaining, n - pos)
                buf += data[pos : pos + take]
                pos += take
                self._remaining -= take
                continue
            take = min(4 - len(self._header), n - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) < 4:
                break
            header = bytes(self._header)
            self._header.clear()
            length = int.from_bytes(header[:3], "little")
            starts_command = header[3] == 0 and not self._continued and not self._wraps
            self._header_read(header[3], length, starts_command)
            self._remaining = length
            if starts_command and length:
                self._pending_header = header  # until its command byte is seen
            else:
                buf += header
        if buf:
            segments.append(bytes(buf))
        return segments, commands

    def _header_read(self, seq: int, length: int, starts: bool) -> None:
        was_continued = self._continued
        if not was_continued:  # a new logical packet
            self._in_command = starts
        self._continued = length == MAX_PAYLOAD
        # Past sequence 255 the exchange goes on at 0 (LOAD DATA LOCAL's file), unless this
        # packet ends the client's turn: a command's last piece, or the empty packet that
        # ends the file (not the empty piece ending a split 16 MiB packet).
        self._wraps = seq == 255 and not self._in_command and bool(length or was_continued)


class ThreadedRelay:
    """Two threads per session: client → server scanned, server → client spliced."""

    THREADS = 2

    def __init__(
        self,
        *,
        client: socket.socket,
        server: socket.socket,
        counters: Counters,
        on_command: Callable[[int], None],
        on_change_user: Callable[[bytes], tuple[bytes | None, bytes | None]],
        on_done: Callable[[], None],
        send_to_client: bytes = b"",
        send_to_server: bytes = b"",
        farewell: bytes = b"",
        compute_gone: Callable[[], bool] = lambda: True,
        on_kill: Callable[[bytes], tuple[bytes | None, bytes | None]] = lambda p: (p, None),
    ) -> None:
        self.client = client
        self.server = server
        self.counters = counters
        self.on_command = on_command
        self.on_change_user = on_change_user
        self.on_done = on_done
        self._initial = send_to_client
        self._initial_to_server = send_to_server
        # Sent to the client if the compute goes away under an idle session (a suspend),
        # so the client reads a clear error instead of a bare disconnect; not when the
        # compute runs on (``compute_gone``, asked then, blocking: False), having ended the
        # session itself (its wait_timeout, a KILL): the client sees the server's own close.
        self._farewell = farewell
        self._compute_gone = compute_gone
        # A KILL's COM_QUERY payload -> (the packet for the compute, or an answer instead).
        self.on_kill = on_kill
        self._client_quit = False
        self._lock = threading.Lock()
        self._finished = 0
        self._closed = False

    def start(self) -> None:
        for sock in (self.client, self.server):
            sock.setblocking(True)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._client_to_server, name="relay-c2s", daemon=True).start()
        threading.Thread(target=self._server_to_client, name="relay-s2c", daemon=True).start()

    def close(self) -> None:
        """End the session from outside (both threads return)."""
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _thread_done(self) -> None:
        self._shutdown()
        with self._lock:
            self._finished += 1
            last = self._finished == self.THREADS
        if last:
            for sock in (self.client, self.server):
                with contextlib.suppress(OSError):
                    sock.close()
            self.on_done()

    def _client_to_server(self) -> None:
        scanner = CommandScanner()
        counters = self.counters
        pending = self._initial_to_server
        try:
            while True:
                data = pending or self.client.recv(CHUNK)
                pending = b""
                if not data:
                    return
                segments, commands = scanner.feed(data)
                counters.client_sent(len(data), len(commands))
                for command in commands:
                    if command == Command.QUIT:
                        self._client_quit = True
                    self.on_command(command)
                for segment in segments:
                    if isinstance(segment, HeldChangeUser):
                        to_server, to_client = self.on_change_user(segment.payload)
                        if to_client:
                            self.client.sendall(to_client)
                        if to_server is None:
                            return
                        self.server.sendall(to_server)
                    elif isinstance(segment, HeldKill):
                        to_server, to_client = self.on_kill(segment.payload)
                        if to_client:
                            self.client.sendall(to_client)
                        if to_server:
                            self.server.sendall(to_server)
                    else:
                        self.server.sendall(segment)
        except OSError:
            return
        finally:
            self._thread_done()

    def _server_to_client(self) -> None:
        counters = self.counters
        rfd, wfd = os.pipe()
        try:
            if self._initial:
                self.client.sendall(self._initial)
            src, dst = self.server.fileno(), self.client.fileno()
            while True:
                try:
                    n = os.splice(src, wfd, CHUNK)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        self._copy_loop()
                        return
                    return
                if n == 0:
                    self._say_farewell()
                    return
                left = n
                while left:
                    left -= os.splice(rfd, dst, left)
                counters.bytes_to_client += n
        except OSError:
            return
        finally:
            os.close(rfd)
            os.close(wfd)
            self._thread_done()

    def _say_farewell(self) -> None:
        with self._lock:
            ours = self._closed  # we closed it (proxy shutdown): no farewell then
        if self._farewell and not ours and not self._client_quit and self._compute_gone():
            with contextlib.suppress(OSError):
                self.client.settimeout(FAREWELL_SEND_TIMEOUT)
                self.client.sendall(self._farewell)

    def _copy_loop(self) -> None:
        """Where splice is not supported (some socket types): plain recv/sendall."""
        while True:
            data = self.server.recv(CHUNK)
            if not data:
                self._say_farewell()
                return
            self.client.sendall(data)
            self.counters.bytes_to_client += len(data)


async def async_relay(
    *,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    server_reader: asyncio.StreamReader,
    server_writer: asyncio.StreamWriter,
    counters: Counters,
    on_command: Callable[[int], None],
    on_change_user: Callable[[bytes], Awaitable[bytes | None]],
    farewell: bytes = b"",
    compute_gone: Callable[[], Awaitable[bool]] | None = None,
    on_kill: Callable[[bytes], tuple[bytes | None, bytes | None]] = lambda p: (p, None),
) -> None:
    """The same relay on the event loop, for TLS sessions. ``on_change_user`` returns the
    rewritten packet bytes, or None to end the session."""

    quit_seen = False

    async def c2s() -> None:
        nonlocal quit_seen
        scanner = CommandScanner()
        while data := await client_reader.read(CHUNK):
            segments, commands = scanner.feed(data)
            counters.client_sent(len(data), len(commands))
            for command in commands:
                quit_seen = quit_seen or command == Command.QUIT
                on_command(command)
            for segment in segments:
                if isinstance(segment, HeldChangeUser):
                    rewritten = await on_change_user(segment.payload)
                    if rewritten is None:
                        return
                    server_writer.write(rewritten)
                elif isinstance(segment, HeldKill):
                    to_server, to_client = on_kill(segment.payload)
                    if to_client:
                        client_writer.write(to_client)
                    if to_server:
                        server_writer.write(to_server)
                else:
                    server_writer.write(segment)
            await server_writer.drain()

    async def s2c() -> None:
        while data := await server_reader.read(CHUNK):
            counters.bytes_to_client += len(data)
            client_writer.write(data)
            await client_writer.drain()
        if farewell and not quit_seen and (compute_gone is None or await compute_gone()):
            client_writer.write(farewell)
            await client_writer.drain()

    tasks = [asyncio.ensure_future(c2s()), asyncio.ensure_future(s2c())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await task
