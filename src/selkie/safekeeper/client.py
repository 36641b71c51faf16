"""A replica's side of MariaDB replication, on asyncio: log in, register, ask for the binlog
from a GTID position, receive events, and acknowledge them when the compute runs
semi-synchronous replication.

The connection goes to the compute over TCP, or its unix socket where the safekeeper shares
its host, as the replication account (:mod:`selkie.safekeeper.accounts`: replication
rights only, ``mysql_native_password``). The conversation is what a MariaDB replica sends
(MariaDB's replication protocol docs, "Replica Registration")::

    SET @master_binlog_checksum = @@global.binlog_checksum   -- events keep their CRC32
    SET @mariadb_slave_capability = 4                          -- GTID-aware replica
    SET @slave_connect_state = '0-1-1234'                      -- start after this GTID
    SET @slave_gtid_strict_mode = 1
    SET @rpl_semi_sync_slave = 1                               -- only for durability=sync
    COM_REGISTER_SLAVE, COM_BINLOG_DUMP (empty file name: GTID positioning)

Each event then arrives as a packet ``0x00 [0xef flag] event``; with flag 0x01 the compute
waits for our acknowledgement (``0xef`` + next position + binlog file name) before it
answers the client's COMMIT.
"""

from __future__ import annotations

import asyncio
import getpass
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from selkie.archive.binlog import HEADER_LEN, EventType, Gtid, parse_rotate
from selkie.compute.base import ComputeInfo
from selkie.mysql import client
from selkie.mysql.packets import is_err, parse_err
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import MAX_PAYLOAD, Capability, ProtocolError, int1, int2, int4, nul_str
from selkie.safekeeper.accounts import Credentials

# Where a compute is reached: its unix socket, or a TCP (host, port).
Address = Path | tuple[str, int]

COM_BINLOG_DUMP = 0x12
COM_REGISTER_SLAVE = 0x15
SEMI_SYNC_INDICATOR = 0xEF
SEMI_SYNC_ACK_REQ = 0x01
# What the replica asks for: MariaDB 10 GTID events, annotations off.
MARIADB_SLAVE_CAPABILITY = 4
CLIENT_CAPS = (
    Capability.LONG_PASSWORD
    | Capability.LONG_FLAG
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
)
# The largest event accepted (max_allowed_packet of computes is 1 GiB).
MAX_EVENT = 1 << 30


def follow_address(compute: ComputeInfo, mode: str) -> Address | None:
    """Where the safekeeper reaches a running compute: its unix socket where it has one
    here (``mode`` "auto"), else its TCP address; None when it has neither."""
    if mode == "auto" and compute.socket is not None:
        return compute.socket
    if compute.host and compute.port:
        return (compute.host, compute.port)
    return None


class ReplicationError(Exception):
    """The compute refused or broke the replication conversation."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Received:
    """One event, whether the compute waits for an acknowledgement of it, its type."""

    event: bytes
    ack_requested: bool
    type: int


class ReplicaConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stream = PacketStream(reader, writer, limit=MAX_EVENT + 16)
        self.writer = writer
        self.semi_sync = False
        # Whether events end in a CRC32 (the compute's binlog_checksum, which we ask for).
        self.checksum = True
        # Commands sent (the compute counts them among its statements).
        self.commands = 0
        # Where the compute's binlog stands, for acknowledgements.
        self.binlog_file = ""
        self.binlog_pos = 0

    @classmethod
    async def open(
        cls, address: Address, creds: Credentials | None, *, timeout: float = 10.0
    ) -> ReplicaConnection:
        """Connect to a compute's unix socket (a ``Path``) or TCP address (host, port) and
        log in with the replication account (``creds``; None: as the OS user, through
        the server's ``unix_socket`` authentication)."""
        if isinstance(address, Path):
            connecting = asyncio.open_unix_connection(str(address), limit=1 << 20)
        else:
            connecting = asyncio.open_connection(address[0], address[1], limit=1 << 20)
        reader, writer = await asyncio.wait_for(connecting, timeout)
        conn = cls(reader, writer)
        try:
            await asyncio.wait_for(conn._login(creds), timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _login(self, creds: Credentials | None) -> None:
        user = creds.user if creds is not None else getpass.getuser()
        done = await client.login(
            self.stream,
            user=user,
            stage1=creds.stage1 if creds is not None else None,
            capabilities=CLIENT_CAPS,
            max_packet_size=MAX_EVENT,
        )
        if is_err(done.reply):
            err = parse_err(done.reply)
            raise ReplicationError(f"login refused: {err.message}", code=err.code)

    async def query(self, sql: str) -> list[list[bytes | None]]:
        """A text-protocol query; its rows (values as bytes), ReplicationError on ERR."""
        self.commands += 1
        outcome = await client.query(self.stream, sql, deprecate_eof=False)
        if outcome.error is not None:
            code, _, message = outcome.error
            raise ReplicationError(f"{sql}: {message}", code=code)
        return outcome.rows

    async def start_dump(self, *, after: Gtid | None, server_id: int, semi_sync: bool) -> None:
        """Register as a replica and ask for every transaction after ``after`` (None: from
        the start of the compute's binary log)."""
        state = str(after) if after is not None else ""
        await self.query("SET @master_binlog_checksum = @@global.binlog_checksum")
        ((alg,),) = await self.query("SELECT @master_binlog_checksum")
        self.checksum = alg is not None and alg.upper() != b"NONE"
        await self.query(f"SET @mariadb_slave_capability = {MARIADB_SLAVE_CAPABILITY}")
        await self.query(f"SET @slave_connect_state = '{state}'")
        await self.query("SET @slave_gtid_strict_mode = 1")
        await self.query("SET @slave_gtid_ignore_duplicates = 0")
        if semi_sync:
            await self.query("SET @rpl_semi_sync_slave = 1")
        self.semi_sync = semi_sync
        register = b"".join(
            [
                bytes([COM_REGISTER_SLAVE]),
                int4(server_id),
                int1(0),  # host
                int1(0),  # user
                int1(0),  # password
                int2(0),  # port
                int4(0),  # replication rank
                int4(0),  # master id
            ]
        )
        self.commands += 2  # the registration and the dump request
        await self.stream.send(0, register)
        _, reply = await self.stream.read()
        if is_err(reply):
            err = parse_err(reply)
            raise ReplicationError(f"register refused: {err.message}", code=err.code)
        dump = bytes([COM_BINLOG_DUMP]) + int4(4) + int2(0) + int4(server_id) + nul_str(b"")[:-1]
        await self.stream.send(0, dump)

    async def _packets(self) -> AsyncIterator[bytes]:
        """The stream's packets, read in large pieces (a busy compute sends tens of
        thousands of small events a second: one read and one await each would cost more
        than everything else the safekeeper does with them)."""
        reader = self.stream.reader
        buf = bytearray()
        parts: list[bytes] = []
        while True:
            pos = 0
            while len(buf) - pos >= 4:
                length = int.from_bytes(buf[pos : pos + 3], "little")
                end = pos + 4 + length
                if end > len(buf):
                    break
                payload = bytes(buf[pos + 4 : end])
                pos = end
                if length == MAX_PAYLOAD:
                    parts.append(payload)  # a packet of 16 MiB or more goes on
                    continue
                if parts:
                    payload, parts = b"".join([*parts, payload]), []
                yield payload
            del buf[:pos]
            data = await reader.read(1 << 18)
            if not data:
                raise ConnectionResetError("the compute closed the binlog stream")
            buf += data

    async def events(self) -> AsyncIterator[Received]:
        """The events as they arrive, until the compute ends the stream (it stops)."""
        async for payload in self._packets():
            if not payload:
                raise ProtocolError("empty packet in the binlog stream")
            if payload[0] == 0xFF:
                err = parse_err(payload)
                raise ReplicationError(f"binlog stream: {err.message}", code=err.code)
            if payload[0] == 0xFE and len(payload) < 9:
                return  # EOF: the compute is shutting down
            if payload[0] != 0x00:
                raise ProtocolError(f"unexpected packet 0x{payload[0]:02x} in the binlog stream")
            ack = False
            body = payload[1:]
            if self.semi_sync:
                if len(body) < 2 or body[0] != SEMI_SYNC_INDICATOR:
                    raise ProtocolError("semi-sync header missing")
                ack = bool(body[1] & SEMI_SYNC_ACK_REQ)
                body = body[2:]
            if len(body) < HEADER_LEN:
                raise ProtocolError("binlog event shorter than its header")
            etype = body[4]
            if etype == EventType.ROTATE:
                position, name = parse_rotate(body, checksum=self.checksum)
                self.binlog_file, self.binlog_pos = name, position
            else:
                log_pos = int.from_bytes(body[13:17], "little")
                if log_pos:
                    self.binlog_pos = log_pos
            yield Received(body, ack, etype)

    async def acknowledge(self, binlog_file: str, binlog_pos: int) -> None:
        """Tell the compute everything up to ``binlog_pos`` of ``binlog_file`` (where the
        event that asked for it ended) is durable here."""
        payload = (
            bytes([SEMI_SYNC_INDICATOR]) + struct.pack("<Q", binlog_pos) + binlog_file.encode()
        )
        await self.stream.send(0, payload)

    def close(self) -> None:
        self.writer.close()
