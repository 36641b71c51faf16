"""Console sign-in: an API key, checked once, becomes a server-side session.

The browser holds only a random session id in an HttpOnly, SameSite=Strict cookie; the key
itself is never kept (not in the cookie, not here: a session remembers the key's id and
checks on every request that the key is still valid). Every form carries the session's
CSRF token; the sign-in form, before there is a session, a token paired with a short-lived
cookie of its own. Sessions live in this process and end after ``ttl`` seconds idle.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

COOKIE = "selkie_console"
PRE_COOKIE = "selkie_console_signin"
TTL = 8 * 3600.0
MAX_SESSIONS = 10_000


@dataclass
class ConsoleSession:
    id: str
    key_id: int
    csrf: str
    seen: float
    # Shown once on the next page (a new role's password), then dropped.
    flash: list[dict[str, Any]] = field(default_factory=list)


class ConsoleSessions:
    def __init__(self, *, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._sessions: dict[str, ConsoleSession] = {}

    def open(self, key_id: int) -> ConsoleSession:
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.seen)
            del self._sessions[oldest.id]
        session = ConsoleSession(
            id=secrets.token_urlsafe(32),
            key_id=key_id,
            csrf=secrets.token_urlsafe(32),
            seen=time.monotonic(),
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> ConsoleSession | None:
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self.ttl:
            del self._sessions[session.id]
            return None
        session.seen = now
        return session

    def close(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self._sessions.values() if now - s.seen > self.ttl]:
            del self._sessions[sid]


def same_token(given: object, expected: str | None) -> bool:
    """A form's token against the one it must carry, in constant time."""
    return (
        isinstance(given, str)
        and bool(expected)
        and hmac.compare_digest(given.encode(), str(expected).encode())
    )
