"""Admission of connections that have not authenticated yet: how many may be in the
handshake at once, in all and per source address. Anyone can open a TCP connection; what
it may hold before it proves who it is must be bounded, or a few hosts opening thousands of
silent connections hold the proxy's memory and descriptors (a slowloris). Each of these
also has one deadline for the whole pre-auth phase (TLS included): see ProxyServer."""

from __future__ import annotations

from collections import Counter

from selkie.mysql.packets import build_err

# The server's own answer to a full connection table (ER_CON_COUNT_ERROR).
TOO_MANY = build_err(1040, "Too many connections", "08004")


class Admission:
    def __init__(self, *, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._by_address: Counter[str] = Counter()
        self._waiting = 0
        # Connections refused, by which cap refused them ("total", "address").
        self.refused: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        """Connections in the pre-auth phase now."""
        return self._waiting

    def enter(self, address: str | None) -> bool:
        """Count a new connection from ``address`` in (None: not known yet, behind a load
        balancer); False (and counted as refused) when a cap is reached."""
        if self._waiting >= self.total:
            self.refused["total"] += 1
            return False
        if address is not None and not self._take(address):
            return False
        self._waiting += 1
        return True

    def _take(self, address: str) -> bool:
        if self._by_address[address] >= self.per_address:
            self.refused["address"] += 1
            return False
        self._by_address[address] += 1
        return True

    def identify(self, address: str) -> bool:
        """A connection counted in without an address now has one (the PROXY header's);
        False when that address is at its cap (the caller leaves with None)."""
        return self._take(address)

    def leave(self, address: str | None) -> None:
        """The connection authenticated, failed, or went away."""
        self._waiting -= 1
        if address is None:
            return
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]
