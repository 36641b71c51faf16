"""One statement on a compute connection for SQL over HTTP, its answer read whole and
bounded: an OK (rows affected, the insert id, the server status), an ERR, or a
text-protocol result set (see :mod:`selkie.mysql.client`, which reads it)."""

from __future__ import annotations

import asyncio

from selkie.mysql import client
from selkie.mysql.client import Column, Outcome, ResultTooLarge, reset
from selkie.mysql.stream import PacketStream

__all__ = ["MAX_RESULT_BYTES", "Column", "Outcome", "ResultTooLarge", "reset", "run_query"]

# The most bytes of rows one answer may hold (a request is answered whole).
MAX_RESULT_BYTES = 10 << 20


async def run_query(
    stream: PacketStream, sql: str, *, timeout: float, deprecate_eof: bool
) -> Outcome:
    """Send COM_QUERY and read its whole answer (only the first result of several), within
    ``timeout`` and :data:`MAX_RESULT_BYTES`."""
    return await asyncio.wait_for(
        client.query(stream, sql, deprecate_eof=deprecate_eof, max_bytes=MAX_RESULT_BYTES),
        timeout,
    )
