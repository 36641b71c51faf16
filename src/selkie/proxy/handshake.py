"""The first step of a client connection: the proxy's greeting, TLS, the client's login.

The proxy greets with its own scramble, upgrades to TLS when the client asks, and reads the
HandshakeResponse. Nothing has reached the control plane or a compute yet: which endpoint
and role the client wants comes from its user name (or the TLS server name), and
:mod:`selkie.proxy.connect` checks the password before anything wakes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from selkie.mysql import auth
from selkie.mysql.packets import (
    CLEAR_PLUGIN,
    NATIVE_PLUGIN,
    HandshakeResponse41,
    build_auth_switch_request,
    build_handshake_v10,
    is_ssl_request,
    parse_handshake_response,
)
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import PROXY_CAPABILITIES, Capability, ProtocolError
from selkie.proxy.backend import HANDSHAKE_LIMIT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hello:
    """A client that has logged in as far as the proxy can tell without the control plane:
    its HandshakeResponse, read after the greeting (and TLS)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stream: PacketStream
    response: HandshakeResponse41
    scramble: bytes
    seq: int  # the sequence id of the proxy's next packet to the client
    tls: bool
    sni: str | None
    client_ip: str

    @property
    def client_caps(self) -> int:
        """The capabilities both sides have (what the compute is asked for on its behalf)."""
        return negotiated_caps(self.response.capabilities, self.tls)


async def handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    connection_id: int,
    server_version: str,
    tls: ssl.SSLContext | None,
    timeout: float,
    client_ip: str,
) -> Hello:
    """Greet, upgrade to TLS if asked, and read the client's HandshakeResponse (each step
    within ``timeout``). Raises ProtocolError on a client that does not speak MySQL."""
    scramble = auth.new_scramble()
    stream = PacketStream(reader, writer, limit=HANDSHAKE_LIMIT)
    caps = PROXY_CAPABILITIES | (Capability.SSL if tls else 0)
    await stream.send(
        0,
        build_handshake_v10(
            server_version=server_version,
            connection_id=connection_id,
            scramble=scramble,
            capabilities=caps,
        ),
    )
    seq, payload = await asyncio.wait_for(stream.read(), timeout)
    sni = None
    upgraded = False
    if is_ssl_request(payload):
        if tls is None:
            raise ProtocolError("SSLRequest but TLS is not configured")
        await asyncio.wait_for(start_tls(reader, writer, tls), timeout)
        upgraded = True
        sni = server_name(writer.get_extra_info("ssl_object"))
        seq, payload = await asyncio.wait_for(stream.read(), timeout)
    return Hello(
        reader=reader,
        writer=writer,
        stream=stream,
        response=parse_handshake_response(payload),
        scramble=scramble,
        seq=(seq + 1) & 0xFF,
        tls=upgraded,
        sni=sni,
        client_ip=client_ip,
    )


@dataclass(frozen=True)
class Route:
    endpoint_id: str
    role: str
    pooled: bool
    # A branch's read pool (``<branch_id>-ro``): the endpoint is one of its read-only
    # endpoints, picked by the connector (``endpoint_id`` empty until then).
    read_pool: str | None = None


READ_POOL_SUFFIX = "-ro"


def route(user: str, sni: str | None, domain: str) -> Route | None:
    """``<endpoint_id>[-pooler].<role>`` in the user name, or ``<endpoint_id>[-pooler]``
    as the first label of the TLS server name with the plain role as the user. A branch's
    read pool is named ``<branch_id>-ro[-pooler]`` the same ways."""
    endpoint = None
    role = user
    head, dot, tail = user.partition(".")
    if dot and head.startswith(("ep-", "br-")) and tail:
        endpoint, role = head, tail
    elif sni:
        name = sni.lower().rstrip(".")
        suffix = "." + domain.lower()
        label = name[: -len(suffix)] if name.endswith(suffix) else name.split(".", 1)[0]
        if label.startswith(("ep-", "br-")) and "." not in label:
            endpoint = label
    if endpoint is None or not role:
        return None
    pooled = endpoint.endswith("-pooler")
    if pooled:
        endpoint = endpoint[: -len("-pooler")]
    if endpoint.startswith("br-"):
        if not endpoint.endswith(READ_POOL_SUFFIX) or len(endpoint) <= 3 + len(READ_POOL_SUFFIX):
            return None
        return Route(
            endpoint_id="", role=role, pooled=pooled, read_pool=endpoint[: -len(READ_POOL_SUFFIX)]
        )
    return Route(endpoint_id=endpoint, role=role, pooled=pooled)


def negotiated_caps(client_caps: int, tls: bool) -> int:
    offered = PROXY_CAPABILITIES | (Capability.SSL if tls else 0)
    return client_caps & offered


async def read_client_auth(
    stream: PacketStream,
    response: HandshakeResponse41,
    seq: int,
    scramble: bytes,
    *,
    tls: bool,
) -> tuple[str, bytes, int]:
    """The client's auth answer as (plugin, data, next seq): native tokens as they are;
    other plugins are switched to native (cleartext is accepted over TLS only)."""
    plugin = response.auth_plugin or NATIVE_PLUGIN
    if not response.capabilities & Capability.PLUGIN_AUTH:
        plugin = NATIVE_PLUGIN
    if plugin == NATIVE_PLUGIN or (plugin == CLEAR_PLUGIN and tls):
        return plugin, response.auth_response, seq
    # caching_sha2_password (MySQL 8 clients), client_ed25519, cleartext without TLS, …
    seq = await stream.send(seq, build_auth_switch_request(NATIVE_PLUGIN, scramble))
    seq, data = await stream.read()
    return NATIVE_PLUGIN, data, (seq + 1) & 0xFF


SNI_ATTRIBUTE = "selkie_server_name"


def sni_capture(context: ssl.SSLContext) -> None:
    """Make ``context`` note each connection's SNI name on its SSL object (read back with
    :func:`server_name`); nothing outlives the connection."""

    def callback(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            setattr(sslobj, SNI_ATTRIBUTE, name)

    context.sni_callback = callback


def server_name(sslobj: object) -> str | None:
    name = getattr(sslobj, SNI_ATTRIBUTE, None)
    return name if isinstance(name, str) else None


async def start_tls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    """Upgrade the client connection to TLS (server side).

    A client sends its ClientHello right behind the SSLRequest, so the StreamReader may
    already hold its first bytes, where the TLS layer would never see them and the handshake
    would hang. Such bytes are handed to the TLS protocol once it is in place, through the
    protocol interface only, so this works on the standard loop and on uvloop alike.
    """
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009 - no public accessor
    early = bytes(buffer)
    buffer.clear()
    if not early:
        await writer.start_tls(context)
        return
    transport = writer.transport
    original = transport.get_protocol()
    loop = asyncio.get_running_loop()

    def feed(proto: Any) -> None:
        # uvloop's TLS protocol is buffered but not an asyncio.BufferedProtocol subclass.
        if not hasattr(proto, "get_buffer"):
            proto.data_received(early)
            return
        view = memoryview(early)
        while view:
            buf = memoryview(proto.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    settled = False

    def inject() -> None:
        if settled:
            return  # start_tls failed before it installed its protocol (the client left)
        proto = transport.get_protocol()
        if proto is original:
            loop.call_soon(inject)  # start_tls has not installed its protocol yet
            return
        # start_tls installs the TLS protocol and queues its connection_made and the resumed
        # reading behind this callback: these bytes go in now, before any read from the
        # socket (uvloop delivers reads between two runs of the callback queue). The TLS
        # protocol only buffers them until its handshake starts.
        feed(proto)

    loop.call_soon(inject)
    try:
        await writer.start_tls(context)
    finally:
        settled = True
