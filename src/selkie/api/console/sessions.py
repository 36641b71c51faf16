"""Console sign-in: an API key, checked once, becomes a server-side session.

The browser holds only a random session id in an HttpOnly, SameSite=Strict cookie; the key
itself is never kept (not in the cookie, not here: a session remembers the key's id and
checks on every request that the key is still valid). Every form carries the session's
CSRF token; the sign-in form, before there is a session, a token paired with a short-lived
cookie of its own. Sessions live in this process and end after ``ttl`` seconds idle.

The table is bounded without letting one tenant empty it for the others: an organization
holds at most ``per_org`` sessions (a new one ends its own least recently used), and when
the whole table is full the new session ends the least recently used one of the
organization holding the most. Signing in over and over signs out only one's own
organization.
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
MAX_PER_ORG = 200


@dataclass
class ConsoleSession:
    id: str
    key_id: int
    org_id: str
    csrf: str
    seen: float
    # Shown once on the next page (a new role's password), then dropped.
    flash: list[dict[str, Any]] = field(default_factory=list)


class ConsoleSessions:
    def __init__(
        self, *, ttl: float = TTL, limit: int = MAX_SESSIONS, per_org: int = MAX_PER_ORG
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self.per_org = per_org
        self._sessions: dict[str, ConsoleSession] = {}
        self._by_org: dict[str, dict[str, ConsoleSession]] = {}

    def open(self, key_id: int, org_id: str) -> ConsoleSession:
        self._expire()
        mine = self._by_org.get(org_id, {})
        if len(mine) >= self.per_org:
            self._end(min(mine.values(), key=lambda s: s.seen))
        elif len(self._sessions) >= self.limit:
            largest = max(self._by_org.values(), key=len)
            self._end(min(largest.values(), key=lambda s: s.seen))
        session = ConsoleSession(
            id=secrets.token_urlsafe(32),
            key_id=key_id,
            org_id=org_id,
            csrf=secrets.token_urlsafe(32),
            seen=time.monotonic(),
        )
        self._sessions[session.id] = session
        self._by_org.setdefault(org_id, {})[session.id] = session
        return session

    def count(self, org_id: str | None = None) -> int:
        return len(self._sessions if org_id is None else self._by_org.get(org_id, {}))

    def get(self, session_id: str | None) -> ConsoleSession | None:
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self.ttl:
            self._end(session)
            return None
        session.seen = now
        return session

    def close(self, session_id: str | None) -> None:
        session = self._sessions.get(session_id or "")
        if session is not None:
            self._end(session)

    def _end(self, session: ConsoleSession) -> None:
        del self._sessions[session.id]
        mine = self._by_org[session.org_id]
        del mine[session.id]
        if not mine:
            del self._by_org[session.org_id]

    def _expire(self) -> None:
        now = time.monotonic()
        for session in [s for s in self._sessions.values() if now - s.seen > self.ttl]:
            self._end(session)


def same_token(given: object, expected: str | None) -> bool:
    """A form's token against the one it must carry, in constant time."""
    return (
        isinstance(given, str)
        and bool(expected)
        and hmac.compare_digest(given.encode(), str(expected).encode())
    )
