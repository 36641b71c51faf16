"""The last step of a relayed session: bytes both ways until either side leaves.

Plaintext sessions leave asyncio: both sockets go to a relay thread, which splices the
compute's answers to the client without them entering Python: the compiled relay
(:mod:`selkie.proxy.crelay`) when it was built, else :class:`ThreadedRelay`. TLS sessions
are relayed on the event loop (a TLS stream cannot be spliced). Either way the client's
commands are scanned on the way in, and ``COM_CHANGE_USER`` is rewritten: its token answers
the proxy's scramble, and the compute needs one that answers its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from selkie.controlplane import Access, ControlPlane
from selkie.mysql import auth
from selkie.mysql.packets import NATIVE_PLUGIN, build_change_user, build_err, parse_change_user
from selkie.mysql.stream import frame
from selkie.mysql.wire import ErrorCode, ProtocolError
from selkie.proxy.backend import BackendConnection
from selkie.proxy.connect import Credentials
from selkie.proxy.crelay import relay_class
from selkie.proxy.handshake import Hello, Route, route
from selkie.proxy.relay import Counters, ThreadedRelay, async_relay


class Verify(Protocol):
    """The proxy's one password check (:meth:`Connector.verify`): the role's access and
    SHA1(password), or None for a refusal (counted and paced as a failed login)."""

    async def __call__(
        self, target: Route | None, credentials: Credentials | None, *, client_ip: str
    ) -> tuple[Access, bytes] | None: ...


# COM_CHANGE_USER's payload -> (to the compute, to the client).
ChangeUser = Callable[[bytes], Coroutine[Any, Any, tuple[bytes | None, bytes | None]]]
# How long the control plane may take to say whether a compute that closed a session runs on.
GONE_CHECK_TIMEOUT = 2.0

log = logging.getLogger(__name__)


# A KILL's COM_QUERY payload -> (its payload for the compute, or an answer for the client).
Kill = Callable[[bytes], tuple[bytes | None, bytes | None]]


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a relayed session asks the proxy: how it ends when its compute closes it (with
    ``farewell``, an ERR for the client, if ``compute_gone()`` says the compute went away,
    else with a plain close after whatever the server itself sent), and what a KILL naming
    a session's greeting id becomes (``kill``, framed here)."""

    farewell: bytes
    compute_gone: Callable[[], Coroutine[Any, Any, bool]]
    kill: Kill

    def kill_framed(self, payload: bytes) -> tuple[bytes | None, bytes | None]:
        to_server, answer = self.kill(payload)
        return (
            frame(0, to_server)[0] if to_server is not None else None,
            frame(1, answer)[0] if answer is not None else None,
        )


class Passthrough:
    def __init__(
        self,
        control: ControlPlane,
        *,
        domain: str,
        backend_timeout: float,
        verify: Verify,
        relay: str = "auto",
    ) -> None:
        self.control = control
        self.domain = domain
        self.backend_timeout = backend_timeout
        # COM_CHANGE_USER's token is checked as a login's is: a failure is counted and
        # paced like any other (Connector.verify).
        self.verify = verify
        self._relays: set[ThreadedRelay] = set()
        # Plaintext sessions: the compiled relay when built (crelay.py), else the Python one.
        self.relay_class = relay_class(relay)

    def close(self) -> None:
        """End every relayed session (the proxy is stopping)."""
        for relay in list(self._relays):
            relay.close()

    async def run(
        self,
        hello: Hello,
        conn: BackendConnection,
        endpoint_id: str,
        first_bytes: bytes,
        counters: Counters,
        *,
        kill: Kill,
    ) -> None:
        """Relay until either side closes; ``first_bytes`` (the compute's OK to the login,
        framed for the client) go to the client first."""
        farewell = frame(
            0,
            build_err(
                ErrorCode.CONNECTION_KILLED,
                f"Connection to endpoint {endpoint_id} closed: its compute was suspended "
                "or stopped. Reconnect to wake it.",
            ),
        )[0]

        async def change_user(payload: bytes) -> tuple[bytes | None, bytes | None]:
            return await self._change_user(payload, endpoint_id, hello, conn.scramble)

        async def compute_gone() -> bool:
            """Asked when the compute closed the session: the farewell is for a suspend or a
            stop, not for the server's own end of it (its wait_timeout, a KILL)."""
            try:
                running = await asyncio.wait_for(
                    self.control.compute_running(endpoint_id), GONE_CHECK_TIMEOUT
                )
            except Exception as exc:  # cannot tell: the farewell, as before the question
                log.debug("endpoint %s: is its compute running? %r", endpoint_id, exc)
                return True
            return not running

        hooks = Hooks(farewell, compute_gone, kill)
        if hello.tls:
            await self._on_loop(hello, conn, first_bytes, counters, change_user, hooks)
        else:
            await self._in_thread(hello, conn, first_bytes, counters, change_user, hooks)

    async def _on_loop(
        self,
        hello: Hello,
        conn: BackendConnection,
        first_bytes: bytes,
        counters: Counters,
        change_user: ChangeUser,
        hooks: Hooks,
    ) -> None:
        writer = hello.writer
        writer.write(first_bytes)
        await writer.drain()

        async def on_change_user(payload: bytes) -> bytes | None:
            to_server, to_client = await change_user(payload)
            if to_client:
                writer.write(to_client)
                await writer.drain()
            return to_server

        await async_relay(
            client_reader=hello.reader,
            client_writer=writer,
            server_reader=conn.reader,
            server_writer=conn.writer,
            counters=counters,
            on_command=_ignore,
            on_change_user=on_change_user,
            farewell=hooks.farewell,
            compute_gone=hooks.compute_gone,
            on_kill=hooks.kill_framed,
        )

    async def _in_thread(
        self,
        hello: Hello,
        conn: BackendConnection,
        first_bytes: bytes,
        counters: Counters,
        change_user: ChangeUser,
        hooks: Hooks,
    ) -> None:
        loop = asyncio.get_running_loop()
        client_sock, client_left = _detach(hello.reader, hello.writer)
        try:
            server_sock, server_left = _detach(conn.reader, conn.writer)
        except OSError:
            client_sock.close()
            raise
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            def settle() -> None:
                if not done.done():
                    done.set_result(None)

            loop.call_soon_threadsafe(settle)

        def change_user_blocking(payload: bytes) -> tuple[bytes | None, bytes | None]:
            future = asyncio.run_coroutine_threadsafe(change_user(payload), loop)
            return future.result(timeout=self.backend_timeout + 5)

        def compute_gone_blocking() -> bool:
            try:
                future = asyncio.run_coroutine_threadsafe(hooks.compute_gone(), loop)
                return future.result(timeout=GONE_CHECK_TIMEOUT + 1)
            except Exception:  # the loop is stopping (the proxy's doing) or did not answer
                return True

        async def kill_on_loop(payload: bytes) -> tuple[bytes | None, bytes | None]:
            return hooks.kill_framed(payload)

        def kill_blocking(payload: bytes) -> tuple[bytes | None, bytes | None]:
            # The proxy's sessions are the event loop's: asked there.
            future = asyncio.run_coroutine_threadsafe(kill_on_loop(payload), loop)
            return future.result(timeout=self.backend_timeout + 5)

        relay = self.relay_class(
            client=client_sock,
            server=server_sock,
            counters=counters,
            on_command=_ignore,
            on_change_user=change_user_blocking,
            on_done=finished,
            send_to_client=first_bytes + server_left,
            send_to_server=client_left,
            farewell=hooks.farewell,
            compute_gone=compute_gone_blocking,
            on_kill=kill_blocking,
        )
        self._relays.add(relay)
        try:
            relay.start()
        except RuntimeError:  # no thread could be made: nothing owns the sockets yet
            self._relays.discard(relay)
            client_sock.close()
            server_sock.close()
            raise
        try:
            await asyncio.shield(done)
        finally:
            self._relays.discard(relay)
            relay.close()

    async def _change_user(
        self, payload: bytes, endpoint_id: str, hello: Hello, backend_scramble: bytes
    ) -> tuple[bytes | None, bytes | None]:
        """Rewrite COM_CHANGE_USER for the compute: check the client's token against the
        proxy's scramble, answer the compute's scramble. Returns (to the compute, to the
        client); a refusal ends the session after its ERR."""
        client_caps = hello.client_caps
        denied = frame(1, build_err(ErrorCode.ACCESS_DENIED, "Access denied"))[0]
        try:
            change = parse_change_user(payload, client_caps)
        except ProtocolError:
            return None, denied
        new = route(change.user, None, self.domain)
        role = change.user
        if new is not None:
            # A read pool's name keeps the session on the compute it was given.
            if new.endpoint_id != endpoint_id and new.read_pool is None:
                msg = "COM_CHANGE_USER cannot move a session to another endpoint"
                return None, frame(1, build_err(ErrorCode.ACCESS_DENIED, msg))[0]
            role = new.role
        # Only a native token: it answers the proxy's scramble (no plugin switch mid-session).
        credentials = None
        if (change.auth_plugin or NATIVE_PLUGIN) == NATIVE_PLUGIN:
            credentials = Credentials(NATIVE_PLUGIN, change.auth_response, hello.scramble)
        verified = await self.verify(
            Route(endpoint_id, role, False), credentials, client_ip=hello.client_ip
        )
        if verified is None:
            msg = f"Access denied for user '{change.user}' (using password: YES)"
            return None, frame(1, build_err(ErrorCode.ACCESS_DENIED, msg))[0]
        _, stage1 = verified
        rewritten = build_change_user(
            dataclasses.replace(
                change,
                user=role,
                auth_response=auth.native_token(stage1, backend_scramble),
                auth_plugin=NATIVE_PLUGIN,
            ),
            client_caps,
        )
        return frame(0, rewritten)[0], None


def _ignore(_: int) -> None:
    return None


def _detach(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[socket.socket, bytes]:
    """Take a connection away from asyncio as a blocking socket, with any bytes asyncio had
    already read (none in practice: the handshake is strictly request/response)."""
    transport = writer.transport
    transport.pause_reading()  # type: ignore[attr-defined]
    # No public way to drain a StreamReader's buffer.
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009
    leftover = bytes(buffer)
    buffer.clear()
    raw = transport.get_extra_info("socket")
    fd = os.dup(raw.fileno())
    transport.abort()  # closes asyncio's descriptor; the duplicate keeps the connection
    return socket.socket(fileno=fd), leftover
