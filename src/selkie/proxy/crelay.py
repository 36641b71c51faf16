"""The plaintext session relay on its compiled hot path (``selkie.proxy._crelay``).

One thread per session runs the C loop, which holds no GIL while it moves bytes: it polls
both sockets, scans the client's bytes for command starts exactly as
:class:`~selkie.proxy.relay.CommandScanner` does, counts them into the session (read
through :class:`~selkie.proxy.relay.Counters`), and splices the compute's answers to the
client. It comes back to Python only when a ``COM_CHANGE_USER`` is whole (rewritten here,
as by the Python relay) or when a side has gone. Where the extension was not built the
Python relay is used instead, which the log says once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from selkie.errors import ConfigError
from selkie.proxy.relay import ThreadedRelay

log = logging.getLogger(__name__)

try:
    from selkie.proxy._crelay import CHANGE_USER, END_SERVER, Session
except ImportError as exc:  # not built (no compiler at install time): relay in Python
    Session = None  # type: ignore[assignment,misc]
    _missing = str(exc)

CHOICES = ("auto", "c", "python")
_warned = False


def available() -> bool:
    """Whether the compiled relay was built and imports."""
    return Session is not None


def relay_class(choice: str) -> type[ThreadedRelay]:
    """The relay ``choice`` (a ``proxy_relay`` setting) means here: ``auto`` is the compiled
    one when it is built, ``c`` insists on it, ``python`` is the threaded Python relay."""
    global _warned
    if choice not in CHOICES:
        raise ConfigError(f"proxy_relay must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "python":
        return ThreadedRelay
    if Session is None:
        if choice == "c":
            raise ConfigError(f"proxy_relay is 'c' but the compiled relay is missing: {_missing}")
        if not _warned:
            _warned = True
            log.warning("compiled session relay not built (%s): relaying in Python", _missing)
        return ThreadedRelay
    return CRelay


class CRelay(ThreadedRelay):
    """One thread per session, in C but for ``COM_CHANGE_USER`` and the end."""

    THREADS = 1

    def start(self) -> None:
        self._session = Session()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The C loop sets both descriptors non-blocking itself; Python's socket objects
        # must know, for the few writes made here.
        for sock in (self.client, self.server):
            sock.setblocking(False)
        threading.Thread(target=self._run, name="relay-c", daemon=True).start()

    def _run(self) -> None:
        session = self._session
        self.counters.attach(session)
        cfd, sfd = self.client.fileno(), self.server.fileno()
        to_client, to_server, from_client = self._initial, b"", self._initial_to_server
        try:
            while True:
                end, payload = session.run(cfd, sfd, to_client, to_server, from_client)
                to_client = from_client = b""
                if end != CHANGE_USER:
                    break
                assert isinstance(payload, bytes)
                rewritten, answer = self.on_change_user(payload)
                if rewritten is None:  # refused: its ERR, then the end
                    self._send_blocking(answer or b"")
                    return
                to_server, to_client = rewritten, answer or b""
            if end == END_SERVER:
                self._client_quit = session.quit_seen
                self.client.setblocking(True)
                self._say_farewell()
        except OSError:
            return
        finally:
            self.counters.detach()
            self._thread_done()

    def _send_blocking(self, data: bytes) -> None:
        if data:
            self.client.setblocking(True)
            self.client.sendall(data)
