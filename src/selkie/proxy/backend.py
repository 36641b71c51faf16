"""Logging in to a compute on a client's behalf.

The proxy checked the client's password against the stored hash and recovered
``SHA1(password)`` from its token; with that it answers the compute's own scramble, so the
compute sees an ordinary native-password login of the same role.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass

from selkie.controlplane import Backend
from selkie.mysql import client
from selkie.mysql.packets import HandshakeResponse41, is_err, is_ok, parse_ok
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Capability, Command, ProtocolError, ServerStatus

log = logging.getLogger(__name__)

HANDSHAKE_LIMIT = 64 * 1024
# Created on every compute with its accounts (compute/mariadb.py).
CONNECTION_ID_ROUTINE = b"mysql.selkie_connection_id"


@dataclass
class BackendConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    scramble: bytes
    capabilities: int
    first_reply: bytes  # the compute's OK or ERR payload for the login
    thread_id: int = 0  # the compute's id for this connection (its greeting's)


async def open_backend(
    backend: Backend,
    *,
    response: HandshakeResponse41,
    role: str,
    stage1: bytes,
    capabilities: int,
    timeout: float,
    connection_id: int | None = None,
) -> BackendConnection:
    """Connect to the compute and log in as ``role`` with the recovered SHA1(password).
    Returns the compute's reply (OK or ERR) for the client. With ``connection_id`` (the id
    the proxy greeted the client with), the session's ``CONNECTION_ID()`` is made that id."""
    reader, writer = await _connect(backend, timeout)
    try:
        stream = PacketStream(reader, writer, limit=HANDSHAKE_LIMIT)
        done = await asyncio.wait_for(
            client.login(
                stream,
                user=role,
                stage1=stage1,
                # The client's MariaDB extended capabilities too (bits 32 and up), as far
                # as the compute offers them: they shape its column definitions.
                capabilities=capabilities & ~Capability.SSL,
                database=response.database,
                charset=response.charset,
                attributes=dict(response.attributes),
                max_packet_size=response.max_packet_size or 2**24,
            ),
            timeout,
        )
        # Refused before the handshake (1040 Too many connections, say) or at the login:
        # the client gets the compute's own error.
        if connection_id is not None and is_ok(done.reply):
            await _set_connection_id(stream, connection_id, timeout)
        return BackendConnection(
            reader, writer, done.scramble, done.capabilities, done.reply, done.thread_id
        )
    except BaseException:
        writer.close()
        raise


async def _set_connection_id(stream: PacketStream, connection_id: int, timeout: float) -> None:
    """One round trip before the client's first command. A compute without the routine (a
    datadir whose accounts were last synced by an older Selkie) keeps its own id."""
    call = b"CALL " + CONNECTION_ID_ROUTINE + b"(%d)" % connection_id
    await stream.send(0, bytes([Command.QUERY]) + call)
    while True:
        _, reply = await asyncio.wait_for(stream.read(), timeout)
        if is_err(reply):
            log.debug("compute kept its own connection id: %r", reply[3:])
            return
        if not is_ok(reply):
            raise ProtocolError("unexpected answer to the connection-id call")
        if not parse_ok(reply).status & ServerStatus.MORE_RESULTS_EXISTS:
            return


async def _connect(
    backend: Backend, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to the compute, retrying while its accept queue is full (a storm of
    clients): a unix socket then refuses with EAGAIN, which asyncio reports oddly."""
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.005
    while True:
        try:
            if backend.socket is not None:
                # A local compute: its unix socket skips the TCP stack.
                return await asyncio.wait_for(
                    asyncio.open_unix_connection(str(backend.socket), limit=2**20), timeout
                )
            assert backend.host and backend.port
            return await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port, limit=2**20), timeout
            )
        except OSError as exc:
            retriable = exc.errno in (errno.EAGAIN, errno.EINVAL, errno.ECONNREFUSED)
            if not retriable or asyncio.get_running_loop().time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
