"""The HTTP listener's pre-auth limits: the MySQL listener's rules on uvicorn's protocol.

Anyone can open a connection to the HTTP listener, and uvicorn alone bounds neither how long
a request may take to arrive nor how many connections may sit waiting (1,500 half-sent
requests stayed open for good). Each connection here:

- has one deadline (the MySQL handshake's, ``SELKIE_PROXY_HANDSHAKE_TIMEOUT``) for its TLS
  handshake and its first request's headers and body; every later request on it has the same
  deadline from its first byte (between requests, uvicorn's keep-alive timeout of 5 s). Past
  it the connection is dropped;
- is counted in the MySQL listener's own :class:`~selkie.proxy.admission.Admission` (one count
  of unauthenticated connections for the process, in all and per address) from its accept
  until a request on it passes its password check, and again from the first byte of each
  later request until that one does. A connection over a cap is answered 503 (``Too many
  connections``) and closed: at once when it is new, after that request when it is kept
  alive. A wrong password keeps its connection counted while its answer is paced
  (``Connector.failed_login``), so concurrent guesses are bounded by the caps.

TLS is done here (``loop.start_tls``), not by uvicorn, so that a connection in its TLS
handshake is counted and under the deadline too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Mapping
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from selkie.proxy.admission import Admission

log = logging.getLogger(__name__)

TICKET = "selkie.ticket"  # the request's Ticket, in its scope's "state"
TOO_MANY = "Too many connections"
_BODY = json.dumps({"error": {"message": TOO_MANY, "code": "unavailable"}}).encode()
# The answer to a new connection over a cap, before it said anything (plain HTTP only: a TLS
# connection is closed before its handshake).
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class Guard:
    """What the connections of one HTTP listener share: the admission (the MySQL listener's),
    the pre-auth deadline in seconds, the TLS context (None: plain HTTP)."""

    def __init__(self, admission: Admission, *, timeout: float, tls: ssl.SSLContext | None) -> None:
        self.admission = admission
        self.timeout = timeout
        self.tls = tls
        self.handshakes: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self.handshakes):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class Ticket:
    """One request's place in its connection's admission: it holds an admission slot until
    its password matched (:meth:`authenticated`) or it is answered (:meth:`done`); a request
    over a cap is ``refused``."""

    __slots__ = ("conn", "holds", "refused")

    def __init__(self, conn: GuardedProtocol) -> None:
        self.conn = conn
        self.holds = False
        self.refused = False

    def authenticated(self) -> None:
        self.conn.settle(self, authenticated=True)

    def done(self) -> None:
        self.conn.settle(self, authenticated=False)


def ticket(scope: Mapping[str, Any]) -> Ticket | None:
    state = scope.get("state")
    found = state.get(TICKET) if isinstance(state, dict) else None
    return found if isinstance(found, Ticket) else None


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and admission (see the module)."""

    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.address = "local"
        # Admission slots this connection holds; ``spare``: one of them belongs to no
        # request (a connection that has not authenticated anything, between requests).
        self.slots = 0
        self.spare = False
        self.gone = False
        self.started = False  # uvicorn's side has the connection (after TLS, if any)
        self.raw: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None

    # --- the connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (uvloop's are not asyncio's classes, only alike).
        transport = cast(asyncio.Transport, transport)
        self.raw = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else "local"
        if not self.guard.admission.enter(self.address):
            self.gone = True
            if self.guard.tls is None:
                transport.write(REFUSAL)
            transport.close()
            return
        self.slots, self.spare = 1, True
        self.arm()
        if self.guard.tls is None:
            self.start(transport)
            return
        # Nothing is read before the TLS layer is in place (it gets the ClientHello).
        transport.pause_reading()
        task = self.loop.create_task(self.handshake(transport, self.guard.tls))
        self.guard.handshakes.add(task)
        task.add_done_callback(self.guard.handshakes.discard)

    async def handshake(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            secure = await self.loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=self.guard.timeout
            )
        except (Exception, asyncio.CancelledError) as exc:
            log.debug("HTTP TLS handshake failed: %r", exc)
            raw.close()
            self.release()
            return
        if self.gone or secure is None:
            if secure is not None:
                secure.close()
            self.release()
            return
        self.start(secure)

    def start(self, transport: asyncio.Transport) -> None:
        self.started = True
        self.raw = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        if self.started:
            super().connection_lost(exc)

    def release(self) -> None:
        """The connection is gone: its slots go back, its deadline with it."""
        self.gone = True
        self.disarm()
        for _ in range(self.slots):
            self.guard.admission.leave(self.address)
        self.slots, self.spare = 0, False

    # --- the deadline ----------------------------------------------------------------------

    def arm(self) -> None:
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.guard.timeout, self.expire)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def expire(self) -> None:
        """The request did not arrive in time: drop the connection (abort: a client that
        reads nothing must not keep it open with unsent bytes)."""
        self.deadline = None
        if self.raw is not None:
            self.raw.abort()
        self.release()

    # --- requests (uvicorn's parser callbacks) ---------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.arm()
        entry = Ticket(self)
        if self.gone:
            entry.refused = True
        elif self.spare:
            self.spare, entry.holds = False, True
        elif self.guard.admission.enter(self.address):
            self.slots += 1
            entry.holds = True
        else:
            entry.refused = True
        self.scope["state"][TICKET] = entry

    def on_message_complete(self) -> None:
        self.disarm()
        super().on_message_complete()

    def settle(self, entry: Ticket, *, authenticated: bool) -> None:
        """A request's slot, once it authenticated (given back) or was answered without
        (kept by the connection, which has proven nothing, as its spare)."""
        if not entry.holds:
            return
        entry.holds = False
        if self.gone:
            return
        if authenticated or self.spare:
            self.slots -= 1
            self.guard.admission.leave(self.address)
        else:
            self.spare = True
