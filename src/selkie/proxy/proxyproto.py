"""The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of the proxy
sends the real client's address before the client's own bytes. With
``SELKIE_PROXY_PROTOCOL=true`` every connection must start with such a header (one that does
not is closed: the header is what says who the client is, and a client must not be able to
claim an address by sending one itself, so only the balancer may reach the proxy then).

Version 2 is binary: a 12-byte signature, version/command, family/protocol, a 2-byte
length and the addresses; version 1 is one text line ``PROXY TCP4 src dst sport dport``.
A ``LOCAL`` command (the balancer's own health check) keeps the socket's own address.
"""

from __future__ import annotations

import asyncio
import ipaddress

from selkie.mysql.wire import ProtocolError

SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest version 1 line, CRLF included


async def read_proxy_header(reader: asyncio.StreamReader, own: str) -> str:
    """The client address the header gives (``own``, the socket's peer, for LOCAL and
    UNKNOWN). ProtocolError when the connection does not start with a valid header."""
    start = await reader.readexactly(12)
    if start == SIGNATURE_V2:
        head = await reader.readexactly(4)
        version, command = head[0] >> 4, head[0] & 0x0F
        family = head[1] >> 4
        length = int.from_bytes(head[2:4], "big")
        body = await reader.readexactly(length)
        if version != 2 or command not in (0, 1):
            raise ProtocolError("PROXY v2 header with an unknown version or command")
        if command == 0:
            return own  # LOCAL: the balancer itself
        if family == 1 and length >= 12:
            return str(ipaddress.IPv4Address(body[:4]))
        if family == 2 and length >= 36:
            return str(ipaddress.IPv6Address(body[:16]))
        return own  # AF_UNSPEC or AF_UNIX: no address to take
    if start.startswith(b"PROXY "):
        line = start + await reader.readuntil(b"\r\n")
        if len(line) > V1_MAX:
            raise ProtocolError("PROXY v1 line too long")
        parts = line.decode("ascii", "replace").strip().split(" ")
        if len(parts) >= 2 and parts[1] == "UNKNOWN":
            return own
        if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
            raise ProtocolError("malformed PROXY v1 line")
        try:
            return str(ipaddress.ip_address(parts[2]))
        except ValueError as exc:
            raise ProtocolError("PROXY v1 line with a bad source address") from exc
    raise ProtocolError("connection does not start with a PROXY protocol header")
