"""Packet framing over asyncio streams: 3-byte length + 1-byte sequence id, payloads of
16 MiB - 1 or more split into several packets (and joined again on read)."""

from __future__ import annotations

import asyncio

from selkie.mysql.wire import MAX_PAYLOAD, PacketTooLarge, ProtocolError, int3


def frame(seq: int, payload: bytes) -> tuple[bytes, int]:
    """The bytes of one logical packet (split as needed) and the next sequence id."""
    out = []
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_PAYLOAD]
        out.append(int3(len(chunk)) + bytes([seq & 0xFF]) + chunk)
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_PAYLOAD:
            return b"".join(out), seq & 0xFF


class PacketStream:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, limit: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        # The largest logical packet accepted (handshakes are small; relays lift it).
        self.limit = limit

    async def read(self) -> tuple[int, bytes]:
        """One logical packet: (sequence id of its first part, payload)."""
        parts: list[bytes] = []
        total = 0
        first_seq = -1
        while True:
            try:
                header = await self.reader.readexactly(4)
            except asyncio.IncompleteReadError as exc:
                if exc.partial or parts:
                    raise ProtocolError("connection closed inside a packet") from exc
                raise ConnectionResetError("peer closed the connection") from exc
            length = int.from_bytes(header[:3], "little")
            if first_seq < 0:
                first_seq = header[3]
            total += length
            if total > self.limit:
                raise PacketTooLarge(self.limit, header[3])
            try:
                parts.append(await self.reader.readexactly(length))
            except asyncio.IncompleteReadError as exc:
                raise ProtocolError("connection closed inside a packet") from exc
            if length < MAX_PAYLOAD:
                return first_seq, b"".join(parts)

    def write(self, seq: int, payload: bytes) -> int:
        data, nxt = frame(seq, payload)
        self.writer.write(data)
        return nxt

    async def send(self, seq: int, payload: bytes) -> int:
        nxt = self.write(seq, payload)
        await self.writer.drain()
        return nxt
