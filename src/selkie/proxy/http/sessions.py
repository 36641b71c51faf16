"""database-js sessions: an opaque token the client sends back with each request, signed
(HMAC-SHA256 with a key of this proxy process) and with a TTL, saying whose session it is
and which database it uses. While a transaction is open (``BEGIN`` … ``COMMIT``) the token
also names the compute connection it holds (pinned here), so an interactive transaction
spans requests; a pinned connection unused for its TTL is closed (the compute rolls the
transaction back)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Capability
from selkie.proxy.backend import BackendConnection

TTL = 60.0


@dataclass
class Pinned:
    """A compute connection held for a session's open transaction."""

    conn: BackendConnection
    stream: PacketStream
    endpoint_id: str
    user: str
    expires: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The database it logged in with (where COM_RESET_CONNECTION brings it back).
    database: str | None = None
    role: str = ""

    @property
    def deprecate_eof(self) -> bool:
        return bool(self.conn.capabilities & Capability.DEPRECATE_EOF)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.writer.close()


class Sessions:
    def __init__(self, *, ttl: float = TTL, key: bytes | None = None) -> None:
        self.ttl = ttl
        self.key = key or os.urandom(32)
        self.pinned: dict[str, Pinned] = {}

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self.key, payload, hashlib.sha256).hexdigest()

    def encode(self, user: str, database: str | None, pin: str | None) -> str:
        data = {"u": user, "db": database, "pin": pin, "exp": time.time() + self.ttl}
        payload = base64.urlsafe_b64encode(json.dumps(data).encode())
        return f"{payload.decode()}.{self._mac(payload)}"

    def decode(self, token: Any, user: str) -> dict[str, Any] | None:
        """The session's data, or None for no session, a forged, expired or another
        user's one (the request then starts afresh)."""
        if not isinstance(token, str) or "." not in token:
            return None
        payload, _, mac = token.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(payload.encode())):
            return None
        try:
            data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
        except ValueError:
            return None
        if data.get("u") != user or float(data.get("exp", 0)) < time.time():
            return None
        return data

    def pin(self, pinned: Pinned, pin: str | None = None) -> str:
        pin = pin or secrets.token_hex(12)
        pinned.expires = time.monotonic() + self.ttl
        self.pinned[pin] = pinned
        return pin

    def take(self, pin: str | None, user: str) -> Pinned | None:
        """The connection pinned for this session (it leaves the table until pinned again)."""
        found = self.pinned.pop(pin, None) if pin else None
        if found is not None and found.user != user:
            self.pinned[str(pin)] = found
            return None
        return found

    def reap(self) -> int:
        """Close connections held past their TTL (their transactions roll back)."""
        now = time.monotonic()
        stale = [pin for pin, p in self.pinned.items() if p.expires < now]
        for pin in stale:
            self.pinned.pop(pin).close()
        return len(stale)

    def close(self) -> None:
        for pinned in self.pinned.values():
            pinned.close()
        self.pinned.clear()


Key = tuple[str, str, str]  # endpoint, role, database


class Idle:
    """Compute connections kept between requests, per endpoint, role and database: a
    request that leaves no transaction open gives its connection back (reset to its login
    state first), and the next request of that role takes it instead of logging in again.
    At most ``per_key`` wait per key, none longer than ``ttl`` seconds."""

    def __init__(self, *, per_key: int = 64, ttl: float = 30.0) -> None:
        self.per_key = per_key
        self.ttl = ttl
        self._idle: dict[Key, list[tuple[float, Pinned]]] = {}

    def get(self, key: Key) -> Pinned | None:
        waiting = self._idle.get(key)
        while waiting:
            since, conn = waiting.pop()
            if time.monotonic() - since < self.ttl:
                return conn
            conn.close()
        return None

    def put(self, key: Key, conn: Pinned) -> None:
        waiting = self._idle.setdefault(key, [])
        if len(waiting) >= self.per_key:
            conn.close()
            return
        waiting.append((time.monotonic(), conn))

    def reap(self) -> None:
        now = time.monotonic()
        for key, waiting in list(self._idle.items()):
            keep = [(t, c) for t, c in waiting if now - t < self.ttl]
            for t, c in waiting:
                if now - t >= self.ttl:
                    c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close(self) -> None:
        for waiting in self._idle.values():
            for _, conn in waiting:
                conn.close()
        self._idle.clear()

    def count(self) -> int:
        return sum(len(w) for w in self._idle.values())
