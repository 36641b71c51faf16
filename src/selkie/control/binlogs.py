"""The safekeeper's binlog server in a running Selkie: where it listens, and its accounts.

Every timeline has a replication account on it, named by the timeline's id, that reads that
timeline's history and no other (:mod:`selkie.safekeeper.server`); its password derives
from the safekeeper's key (:mod:`selkie.safekeeper.accounts`), so nothing is stored.
Embedded (``selkie up``) it listens on a unix socket in the data dir; ``safekeeper_listen``
puts it on TCP (``host:port``) or turns it off. Read-only computes replicate from it over
TCP: where it listens on a socket, a second listener on a loopback port serves them. With
the safekeeper in a process of its own
(``safekeeper_url``) that process serves the binlogs (:mod:`selkie.safekeeper.standalone`)
and there is no server here: only the accounts' credentials.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from selkie.archive.layout import TimelineRef
from selkie.safekeeper.accounts import Credentials, ReplicationKey
from selkie.safekeeper.dump import HistorySource
from selkie.safekeeper.server import Account, BinlogServer
from selkie.store import Store
from selkie.store.tables import TimelineRow

log = logging.getLogger(__name__)

_SOCKET_PATH_MAX = 100


def default_listen(data_dir: Path) -> str:
    """A unix socket in the data dir (or, where that path is too long for a socket, in
    /tmp under a name derived from it)."""
    path = data_dir.resolve() / "safekeeper.sock"
    if len(str(path)) > _SOCKET_PATH_MAX:
        digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]  # noqa: S324
        path = Path("/tmp") / f"selkie-{digest}-safekeeper.sock"  # noqa: S108
    return f"unix:{path}"


class Binlogs:
    def __init__(
        self,
        *,
        store: Store,
        key: ReplicationKey,
        listen: str,
        source: HistorySource | None,
    ) -> None:
        """``source``: where dumps read timelines (this process's safekeeper); None: the
        safekeeper runs elsewhere and serves them itself."""
        self.store = store
        self.key = key
        self.listen = listen if source is not None else "off"
        self.server = (
            BinlogServer(source=source, accounts=self._account) if source is not None else None
        )
        # Where the listener is a unix socket: the loopback port read-only computes use.
        self._loopback = (
            BinlogServer(source=source, accounts=self._account)
            if source is not None and self.listen.startswith("unix:")
            else None
        )

    @property
    def address(self) -> str | None:
        """Where it listens (``unix:/path`` or ``host:port``), once started."""
        return self.server.address if self.server is not None else None

    @property
    def for_computes(self) -> tuple[str, int] | None:
        """The TCP address read-only computes replicate from (None: no binlog server here
        is started)."""
        server = self._loopback or self.server
        if server is None or server.port is None:
            return None
        host = (server.address or "").rpartition(":")[0] if server is self.server else ""
        wildcard = host in ("", "0.0.0.0", "::", "[::]")  # noqa: S104 - compared, not bound
        return ("127.0.0.1" if wildcard else host), server.port

    async def start(self) -> None:
        if self.server is None or self.listen == "off":
            return
        await self.server.start(self.listen)
        log.info("the safekeeper serves timelines' binlogs on %s", self.server.address)
        if self._loopback is not None:
            await self._loopback.start("127.0.0.1:0")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self._loopback is not None:
            await self._loopback.stop()

    def credentials(self, timeline_id: str) -> Credentials:
        """The replication account that reads the timeline."""
        return self.key.timeline_account(timeline_id)

    async def _account(self, user: str) -> Account | None:
        if not user.startswith("tl-") or len(user) > 64:
            return None
        row = await asyncio.to_thread(self._timeline, user)
        if row is None:
            return None
        stage2 = hashlib.sha1(self.credentials(row.id).stage1).digest()  # noqa: S324
        return Account(TimelineRef(row.project_id, row.id), stage2)

    def _timeline(self, timeline_id: str) -> TimelineRow | None:
        with self.store.read() as s:
            return s.get(TimelineRow, timeline_id)
