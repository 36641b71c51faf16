"""`selkie safekeeper`: the safekeeper and its binlog server in a process of their own.

The process has no state store. Its binlog server's accounts are the timelines it knows:
those it holds (or held) a log of, and, for any other, the timeline's folder found in the
archive (``projects/<project>/timelines/<timeline>/``); each account's password derives
from the shared key, as in `selkie up` (:mod:`selkie.control.binlogs`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

from selkie.archive import Archive
from selkie.archive.layout import TimelineRef
from selkie.errors import SelkieError
from selkie.safekeeper.accounts import ReplicationKey
from selkie.safekeeper.dump import HistorySource
from selkie.safekeeper.server import Account, BinlogServer
from selkie.safekeeper.service import Safekeeper

log = logging.getLogger(__name__)

_TIMELINE_ID_MAX = 64
# The least time between two listings of the archive for an unknown account name.
SCAN_EVERY = 30.0


class SafekeeperProcess:
    def __init__(self, *, root: Path, archive: Archive, key: ReplicationKey, listen: str) -> None:
        self.archive = archive
        self.key = key
        self.listen = listen
        self.safekeeper = Safekeeper(root=root, archive=archive)
        self.server = BinlogServer(
            source=HistorySource(archive=archive, safekeeper=self.safekeeper),
            accounts=self.account,
        )
        # Timelines found in the archive (a timeline never moves to another project).
        self._found: dict[str, TimelineRef] = {}
        self._scan_lock = asyncio.Lock()
        self._scanned = float("-inf")

    async def start(self) -> None:
        await self.safekeeper.start()
        if self.listen != "off":
            await self.server.start(self.listen)
            log.info("the safekeeper serves timelines' binlogs on %s", self.server.address)

    async def stop(self) -> None:
        await self.server.stop()
        await self.safekeeper.stop()
        await self.archive.close()

    async def account(self, user: str) -> Account | None:
        """The binlog server's account of that name: a timeline's, or None."""
        if not user.startswith("tl-") or len(user) > _TIMELINE_ID_MAX:
            return None
        ref = await self.find_timeline(user)
        if ref is None:
            return None
        stage2 = hashlib.sha1(self.key.timeline_account(user).stage1).digest()  # noqa: S324
        return Account(ref, stage2)

    async def find_timeline(self, timeline_id: str) -> TimelineRef | None:
        ref = await self.safekeeper.find_timeline(timeline_id) or self._found.get(timeline_id)
        if ref is not None:
            return ref
        # Looked up before the password is checked: an unknown name costs a listing of the
        # archive at most once every SCAN_EVERY seconds, whoever asks and however often.
        async with self._scan_lock:
            if timeline_id in self._found or time.monotonic() - self._scanned < SCAN_EVERY:
                return self._found.get(timeline_id)
            self._scanned = time.monotonic()
            try:
                objects = await self.archive.list("projects/")
            except SelkieError as exc:
                log.warning("cannot look for timeline %s in the archive: %s", timeline_id, exc)
                return None
            for obj in objects:
                parts = obj.key.split("/")
                # projects/<project>/timelines/<timeline>/…
                if len(parts) > 4 and parts[0] == "projects" and parts[2] == "timelines":
                    self._found.setdefault(parts[3], TimelineRef(parts[1], parts[3]))
        return self._found.get(timeline_id)
