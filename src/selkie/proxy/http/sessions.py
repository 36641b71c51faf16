"""database-js sessions: an opaque token the client sends back with each request, signed
(HMAC-SHA256 with a key of this proxy process) and with a TTL, saying whose session it is
and which database it uses. While a transaction is open (``BEGIN`` … ``COMMIT``) the token
also names the pooled backend it holds (pinned here, out of its endpoint's pool), so an
interactive transaction spans requests; a backend pinned and unused for its TTL is closed
(the compute rolls the transaction back) and its slot in the pool freed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Capability
from selkie.proxy.pooler.backends import Backend
from selkie.proxy.pooler.pool import EndpointPool

TTL = 60.0


@dataclass
class Pinned:
    """A pooled backend borrowed for a request, or held for a session's open transaction."""

    backend: Backend
    pool: EndpointPool
    user: str = ""
    expires: float = 0.0

    @property
    def stream(self) -> PacketStream:
        return self.backend.stream

    @property
    def endpoint_id(self) -> str:
        return self.pool.endpoint_id

    @property
    def role(self) -> str:
        return self.backend.key.role

    @property
    def deprecate_eof(self) -> bool:
        return bool(self.backend.key.caps & Capability.DEPRECATE_EOF)

    async def give_back(self, *, broken: bool = False) -> None:
        await self.pool.release(self.backend, broken=broken)


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
        """Hold ``pinned`` for the session (its transaction is open) until its TTL."""
        if pin not in self.pinned:
            pinned.pool.pin_changed(True)
        pin = pin or secrets.token_hex(12)
        pinned.expires = time.monotonic() + self.ttl
        self.pinned[pin] = pinned
        return pin

    def take(self, pin: str | None, user: str) -> Pinned | None:
        """The connection pinned for this session (it leaves the table until pinned again)."""
        found = self.pinned.get(pin) if pin else None
        if found is None or found.user != user:
            return None
        del self.pinned[str(pin)]
        found.pool.pin_changed(False)
        return found

    async def reap(self) -> int:
        """Close backends held past their TTL (their transactions roll back)."""
        now = time.monotonic()
        stale = [pin for pin, p in self.pinned.items() if p.expires < now]
        for pin in stale:
            await self._drop(pin)
        return len(stale)

    async def close(self) -> None:
        for pin in list(self.pinned):
            await self._drop(pin)

    async def _drop(self, pin: str) -> None:
        pinned = self.pinned.pop(pin)
        pinned.pool.pin_changed(False)
        await pinned.give_back(broken=True)
