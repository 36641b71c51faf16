"""The plaintext session relay on its compiled hot path (``selkie.proxy._crelay``).

One thread (``relay-loop``) relays every plaintext session of the process, as HAProxy
does: epoll over all their sockets, without the GIL. For each session it scans the
client's bytes for command starts exactly as :class:`~selkie.proxy.relay.CommandScanner`
does, counts them into the session (read through :class:`~selkie.proxy.relay.Counters`),
and passes the compute's answers to the client. A session comes back to Python only when
a ``COM_CHANGE_USER`` or a short ``KILL`` is whole (rewritten here, as by the Python relay:
sessions.py) or when a side has
gone; the farewell to the client of a compute that went away is sent from a thread of its
own once the control plane said the compute is gone. Where the extension was not built the
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
    from selkie.proxy._crelay import CHANGE_USER, END_SERVER, KILL, Loop, Session
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


class _Loop:
    """The process's relay loop: one thread, started with the first session."""

    _lock = threading.Lock()
    _loop: Loop | None = None

    @classmethod
    def get(cls) -> Loop:
        with cls._lock:
            if cls._loop is None:
                loop = Loop()
                threading.Thread(target=loop.run, name="relay-loop", daemon=True).start()
                cls._loop = loop
            return cls._loop


class CRelay(ThreadedRelay):
    """A session on the process's C relay loop; Python only for ``COM_CHANGE_USER`` and the
    end. Its handler runs on the loop's thread and must not block: a change of user is
    checked on a thread of its own, and its answer (the compute's, or the proxy's ERR when
    refused) goes back to the client through the loop, never by a blocking send."""

    THREADS = 1

    def start(self) -> None:
        self._session = Session()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The loop makes both descriptors non-blocking; the socket objects must know.
            sock.setblocking(False)
        self.counters.attach(self._session)
        try:
            self._enter(self._initial, b"", self._initial_to_server)
        except OSError as exc:  # as when no thread can be made: nothing owns the sockets
            raise RuntimeError(f"cannot relay: {exc}") from exc

    def _enter(self, to_client: bytes, to_server: bytes, from_client: bytes) -> None:
        _Loop.get().add(
            self._session,
            self.client.fileno(),
            self.server.fileno(),
            to_client,
            to_server,
            from_client,
            self._left,
        )

    def _left(self, end: int, payload: bytes | int | None) -> None:
        # On the loop's thread, with the GIL: nothing here may block.
        if end == CHANGE_USER and isinstance(payload, bytes):
            threading.Thread(
                target=self._change_user, args=(payload,), name="relay-change-user", daemon=True
            ).start()
        elif end == KILL and isinstance(payload, bytes):
            threading.Thread(
                target=self._kill, args=(payload,), name="relay-kill", daemon=True
            ).start()
        elif end == END_SERVER and self._farewell and not self._session.quit_seen:
            # Whether the compute went away is the control plane's to say: not here.
            threading.Thread(target=self._farewell_then_end, name="relay-end", daemon=True).start()
        else:
            self._end()

    def _kill(self, payload: bytes) -> None:
        """A KILL naming a session by its greeting id: the compute's id in its place, or
        the proxy's answer to the client (sessions.py); the session goes on either way."""
        try:
            to_server, to_client = self.on_kill(payload)
            self._enter(to_client or b"", to_server or b"", b"")
        except Exception:
            log.exception("KILL failed; ending the session")
            self._end()

    def _farewell_then_end(self) -> None:
        try:
            self.client.setblocking(True)
            self._say_farewell()
        finally:
            self._end()

    def _change_user(self, payload: bytes) -> None:
        try:
            rewritten, answer = self.on_change_user(payload)
            if rewritten is not None:
                self._enter(answer or b"", rewritten, b"")
                return
            if answer:  # refused: its ERR, queued on the loop like any write, then the end
                self._session.end_after_sending()
                self._enter(answer, b"", b"")
                return
        except Exception:
            log.exception("COM_CHANGE_USER failed; ending the session")
        self._end()

    def _end(self) -> None:
        self.counters.detach()
        self._thread_done()
