"""A faulty front for the test S3 server: the first try of one request in ``every`` is
answered ``503 Slow Down`` (or its connection dropped); tries after it go through to
SeaweedFS.

It reads one HTTP request at a time (headers, then a ``Content-Length`` body), and either
answers it with the fault or forwards it as it came (the ``Host`` header untouched: the
request's signature covers it) on a new connection to the server, asking it to close after
its answer, which is passed back whole; then the client's connection is closed too. A
request is known by its method, path and query, so the client's retry of it goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from urllib.parse import urlparse

SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


class FaultyS3:
    def __init__(self, upstream: str, *, every: int = 1) -> None:
        parsed = urlparse(upstream)
        self.every = every
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.seen: set[bytes] = set()
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            key = method + b" " + target
            if key not in self.seen and len(self.seen) % self.every == 0:
                self.seen.add(key)
                # Every other fault a dropped connection, the rest a 503.
                if sum(self.injected.values()) % 2:
                    self.injected["dropped"] += 1
                    return
                self.injected["503"] += 1
                writer.write(SLOW_DOWN)
                await writer.drain()
                return
            self.seen.add(key)
            await self._forward(lines, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _forward(self, lines: list[bytes], body: bytes, writer: asyncio.StreamWriter) -> None:
        headers = [x for x in lines[1:] if x and not x.lower().startswith(b"connection:")]
        request = b"\r\n".join([lines[0], *headers, b"Connection: close", b"", b""]) + body
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        try:
            up_writer.write(request)
            await up_writer.drain()
            while chunk := await up_reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
            self.forwarded += 1
        finally:
            up_writer.close()
