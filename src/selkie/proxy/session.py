"""One client connection, from the proxy's greeting to the start of the relay.

The order is the point (see ARCHITECTURE, "The proxy's auth flow"): greet with our own
scramble, maybe upgrade to TLS, read the HandshakeResponse, find the endpoint, check the
password against the stored hash — and only then wake the compute, log in to it with the
recovered ``SHA1(password)``, and hand the client the compute's own OK.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from dataclasses import dataclass

from selkie.controlplane import Backend
from selkie.mysql.packets import (
    CLEAR_PLUGIN,
    NATIVE_PLUGIN,
    HandshakeResponse41,
    build_auth_switch_request,
    build_handshake_response,
    is_err,
    is_ok,
    parse_auth_switch_request,
    parse_handshake_v10,
)
from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import PROXY_CAPABILITIES, Capability, ProtocolError
from selkie.proxy import auth

log = logging.getLogger(__name__)

HANDSHAKE_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Route:
    endpoint_id: str
    role: str
    pooled: bool


def route(user: str, sni: str | None, domain: str) -> Route | None:
    """``<endpoint_id>[-pooler].<role>`` in the user name, or ``<endpoint_id>[-pooler]``
    as the first label of the TLS server name with the plain role as the user."""
    endpoint = None
    role = user
    head, dot, tail = user.partition(".")
    if dot and head.startswith("ep-") and tail:
        endpoint, role = head, tail
    elif sni:
        name = sni.lower().rstrip(".")
        suffix = "." + domain.lower()
        label = name[: -len(suffix)] if name.endswith(suffix) else name.split(".", 1)[0]
        if label.startswith("ep-") and "." not in label:
            endpoint = label
    if endpoint is None or not role:
        return None
    pooled = endpoint.endswith("-pooler")
    if pooled:
        endpoint = endpoint[: -len("-pooler")]
    return Route(endpoint_id=endpoint, role=role, pooled=pooled)


def negotiated_caps(client_caps: int, tls: bool) -> int:
    offered = PROXY_CAPABILITIES | (Capability.SSL if tls else 0)
    return client_caps & offered


@dataclass
class BackendConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    scramble: bytes
    capabilities: int
    first_reply: bytes  # the compute's OK or ERR payload for the login


async def open_backend(
    backend: Backend,
    *,
    response: HandshakeResponse41,
    role: str,
    stage1: bytes,
    capabilities: int,
    timeout: float,
) -> BackendConnection:
    """Connect to the compute and log in as ``role`` with the recovered SHA1(password).
    Returns the compute's reply (OK or ERR) for the client."""
    reader, writer = await _connect(backend, timeout)
    try:
        stream = PacketStream(reader, writer, limit=HANDSHAKE_LIMIT)
        _, payload = await asyncio.wait_for(stream.read(), timeout)
        if is_err(payload):
            # Refused before the handshake (1040 Too many connections, say): the client gets
            # the compute's own error.
            return BackendConnection(reader, writer, b"", 0, payload)
        greeting = parse_handshake_v10(payload)
        caps = capabilities & greeting.capabilities & ~Capability.SSL
        scramble = greeting.scramble
        attrs = dict(response.attributes)
        seq = await stream.send(
            1,
            build_handshake_response(
                capabilities=caps,
                max_packet_size=response.max_packet_size or 2**24,
                charset=response.charset,
                user=role,
                auth_response=auth.native_token(stage1, scramble),
                database=response.database,
                attributes=attrs,
            ),
        )
        while True:
            seq, reply = await asyncio.wait_for(stream.read(), timeout)
            if is_ok(reply) or is_err(reply):
                return BackendConnection(reader, writer, scramble, caps, reply)
            if reply[:1] == b"\xfe":
                plugin, data = parse_auth_switch_request(reply)
                if plugin != NATIVE_PLUGIN:
                    raise ProtocolError(f"compute asked for auth plugin {plugin}")
                scramble = data[:20]
                seq = await stream.send(seq + 1, auth.native_token(stage1, scramble))
                continue
            raise ProtocolError("unexpected packet from the compute during login")
    except BaseException:
        writer.close()
        raise


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
