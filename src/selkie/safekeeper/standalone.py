"""`selkie safekeeper`: the safekeeper and its binlog server in a process of their own.

The process has no state store. Its binlog server's accounts are the timelines it knows:
those it holds (or held) a log of, and, for any other, the timeline's folder found in the
archive (``projects/<project>/timelines/<timeline>/``); each account's password derives
from the shared key, as in `selkie up` (:mod:`selkie.control.binlogs`).
"""

from __future__ import annotations

import hashlib
import logging
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
        try:
            objects = await self.archive.list("projects/")
        except SelkieError as exc:
            log.warning("cannot look for timeline %s in the archive: %s", timeline_id, exc)
            return None
        marker = f"/timelines/{timeline_id}/"
        for obj in objects:
            head, found, _ = obj.key.partition(marker)
            if found and head.startswith("projects/") and head.count("/") == 1:
                ref = TimelineRef(head.removeprefix("projects/"), timeline_id)
                self._found[timeline_id] = ref
                return ref
        return None
