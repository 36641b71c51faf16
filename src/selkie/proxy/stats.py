"""What the proxy counts per endpoint: sessions open, bytes each way, commands, last use.

Every client session, relayed or pooled, is counted through :meth:`ProxyStats.session`:
its live :class:`Counters` are read while it runs and folded into the endpoint's totals
when it ends. The totals are cumulative from the proxy's start and reported as
:class:`Activity` readings of one source.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from selkie.controlplane import Activity
from selkie.proxy.relay import Counters


@dataclass
class EndpointStats:
    sessions: int = 0
    last_active: float | None = None
    bytes_to_clients: int = 0
    bytes_from_clients: int = 0
    statements: int = 0
    live: list[Counters] = field(default_factory=list)


class ProxyStats:
    def __init__(self) -> None:
        self._endpoints: dict[str, EndpointStats] = defaultdict(EndpointStats)
        # Who reports these counters, which are cumulative from `started`.
        self.source = f"proxy-{secrets.token_hex(8)}"
        self.started = datetime.now(UTC)

    def __getitem__(self, endpoint_id: str) -> EndpointStats:
        return self._endpoints[endpoint_id]

    def sessions(self, endpoint_id: str) -> int:
        """Client sessions of the endpoint open now."""
        st = self._endpoints.get(endpoint_id)
        return st.sessions if st is not None else 0

    @contextmanager
    def session(self, endpoint_id: str, counters: Counters | None = None) -> Iterator[Counters]:
        """Count one client session of ``endpoint_id`` while the block runs (into
        ``counters``, when the session has them already)."""
        st = self._endpoints[endpoint_id]
        counters = counters or Counters()
        st.sessions += 1
        st.live.append(counters)
        st.last_active = time.time()
        try:
            yield counters
        finally:
            st.sessions -= 1
            st.live.remove(counters)
            st.bytes_to_clients += counters.bytes_to_client
            st.bytes_from_clients += counters.bytes_from_client
            st.statements += counters.statements
            st.last_active = max(st.last_active or 0.0, counters.last_active)

    def activity(self) -> list[Activity]:
        """Each endpoint's totals so far, sessions still open included."""
        out = []
        for endpoint_id, st in self._endpoints.items():
            last = st.last_active
            to_c, from_c, stmts = st.bytes_to_clients, st.bytes_from_clients, st.statements
            for c in st.live:
                last = max(last or 0.0, c.last_active)
                to_c += c.bytes_to_client
                from_c += c.bytes_from_client
                stmts += c.statements
            out.append(
                Activity(
                    endpoint_id=endpoint_id,
                    sessions=st.sessions,
                    last_active=datetime.fromtimestamp(last, UTC) if last else None,
                    bytes_to_clients=to_c,
                    bytes_from_clients=from_c,
                    statements=stmts,
                    source=self.source,
                    source_started=self.started,
                )
            )
        return out
