"""The safekeeper following each running compute, and what the compute's commits wait for.

The safekeeper logs in to a running compute as its replication account (made on the
compute at every start, outside the history: :mod:`selkie.safekeeper.accounts`), over the
compute's unix socket where it has one here, else over TCP (``safekeeper_follow``). Whether
the compute's commits wait for it (``durability``) is applied live and read back from the
server (:mod:`selkie.control.durability`). Before a clean stop the compute takes no more
commits and the safekeeper receives its log to the end from the stream; long-running
computes have the binary log files the archive holds purged.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

from selkie import model
from selkie.archive.binlog import domain_seq
from selkie.archive.layout import TimelineRef
from selkie.compute.base import ComputeDriver, ComputeInfo
from selkie.config import Settings
from selkie.control.durability import Durable, SyncCommit, SyncCommits, durable
from selkie.errors import SelkieError
from selkie.safekeeper.accounts import ReplicationKey, compute_account_statements
from selkie.safekeeper.api import SafekeeperApi
from selkie.safekeeper.client import follow_address
from selkie.store.tables import TimelineRow

log = logging.getLogger(__name__)

# Before a clean stop, how long the safekeeper may take to receive the compute's last
# transactions from its stream.
CATCH_UP_TIMEOUT = 10.0
# Client sessions on a compute: everyone but Selkie's own (the admin, the safekeeper's
# binlog dump) and the server's threads.
CLIENT_SESSIONS = (
    "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
    "AND USER NOT IN ('root', 'system user', 'event_scheduler', 'selkie-safekeeper') "
    "AND COMMAND NOT IN ('Daemon', 'Binlog Dump')"
)
_BINLOG_NAME = re.compile(r"^binlog\.\d{6,}$")


class Following:
    def __init__(
        self,
        *,
        settings: Settings,
        safekeeper: SafekeeperApi,
        driver: ComputeDriver,
        key: ReplicationKey,
        timeline_of: Callable[[str, str], Awaitable[TimelineRow | None]],
    ) -> None:
        self.settings = settings
        self.safekeeper = safekeeper
        self.driver = driver
        # The safekeeper's replication accounts' passwords derive from it.
        self.key = key
        # A branch's current timeline (its compute's endpoint given), from the store.
        self.timeline_of = timeline_of
        self.sync = SyncCommits(driver=driver, timeout_ms=settings.sync_commit_timeout_ms)
        # The computes followed: endpoint -> branch.
        self.endpoints: dict[str, str] = {}

    async def attach(
        self,
        endpoint_id: str,
        branch_id: str,
        project: model.Project,
        compute: ComputeInfo,
        *,
        started: bool = False,
        live: bool = False,
    ) -> None:
        """Have the safekeeper follow the running compute, and the compute's commits wait
        for it or not as the project's durability says (in that order, see
        :meth:`SyncCommits.apply`). ``started``: the compute just started with
        :meth:`server_options` of these settings; otherwise (a thaw, an adopted compute)
        what it was last set to is changed when it differs. ``live``: a change of the
        setting on a running compute, which fails (ComputeError) unless it took."""
        address = follow_address(compute, self.settings.safekeeper_follow)
        if address is None:
            return
        row = await self.timeline_of(branch_id, endpoint_id)
        if row is None:
            return
        want = project.settings.durability is model.Durability.SYNC
        if started:
            self.sync.started(endpoint_id, semi_sync=want)
        ref = TimelineRef(row.project_id, row.id)
        following = None
        if endpoint_id in self.endpoints:
            following = next(
                (
                    s.semi_sync
                    for s in await self.safekeeper.timelines()
                    if s.endpoint_id == endpoint_id
                ),
                None,
            )
        self.endpoints[endpoint_id] = branch_id

        creds = self.key.compute_account()

        async def prepare() -> None:
            # Not in the history: the account is made again wherever it is missing.
            statements = compute_account_statements(creds, self.driver.account_hosts)
            await self.driver.execute(endpoint_id, ["SET SESSION sql_log_bin = 0", *statements])

        if started:
            # Before the first commit: with durability=sync it waits for the safekeeper,
            # which must be able to log in at once (a refused login makes the account too,
            # but only after a round trip that such a commit would wait out).
            await prepare()

        async def follow(semi_sync: bool) -> None:
            await self.safekeeper.attach(
                endpoint_id,
                ref,
                address,
                start_seq=row.start_seq,
                semi_sync=semi_sync,
                creds=creds,
                prepare=prepare,
            )

        await self.sync.apply(
            endpoint_id, want=want, follow=follow, following=following, strict=live
        )
        if live:
            await self.sync.observe(endpoint_id)

    async def detach(self, endpoint_id: str) -> None:
        self.endpoints.pop(endpoint_id, None)
        self.sync.forget(endpoint_id)
        try:
            await self.safekeeper.detach(endpoint_id)
        except SelkieError as exc:
            # A remote safekeeper not answering: the compute's stop goes on (what the
            # stream did not deliver stays in its binary log, streamed at its next start).
            log.warning("the safekeeper did not let go of %s: %s", endpoint_id, exc.message)

    async def before_stop(self, endpoint_id: str, *, timeout: float = CATCH_UP_TIMEOUT) -> None:
        """A running compute is about to stop cleanly: it takes no more commits, and the
        safekeeper gets everything it committed from its stream (a shutdown ends the stream
        at once, before it has sent the last events). What does not arrive in time stays
        in the compute's binary log, which the history's ``after_stop`` reads."""
        if endpoint_id not in self.endpoints:
            return
        await self._end_sessions(endpoint_id)
        try:
            (_, ((pos,),)) = await self.driver.execute(
                endpoint_id, ["SET GLOBAL read_only = ON", "SELECT @@gtid_binlog_pos"]
            )
        except (SelkieError, ValueError) as exc:
            log.warning("before stopping %s: cannot read its position: %s", endpoint_id, exc)
            return
        try:
            caught_up = await self.safekeeper.catch_up(endpoint_id, domain_seq(pos), timeout)
        except SelkieError as exc:
            log.warning("before stopping %s: the safekeeper: %s", endpoint_id, exc.message)
            caught_up = False
        if not caught_up:
            log.warning(
                "the safekeeper did not receive %s's log up to %s in %.0f s before its stop",
                endpoint_id,
                pos,
                timeout,
            )

    async def _end_sessions(self, endpoint_id: str) -> None:
        """End the clients' sessions before the compute turns read-only: a statement caught
        between the two would fail with 1290 (the server is read-only), which no driver
        retries; a session that ends is what a client of a stopping server expects (the
        proxy tells it the compute was suspended, and its next connection wakes it)."""
        try:
            (ids,) = await self.driver.execute(endpoint_id, [CLIENT_SESSIONS])
        except (SelkieError, ValueError) as exc:
            log.warning("before stopping %s: cannot list its sessions: %s", endpoint_id, exc)
            return
        kills = [f"KILL CONNECTION {int(thread_id)}" for (thread_id,) in ids]
        if not kills:
            return
        try:
            await self.driver.execute(endpoint_id, kills)  # one admin connection for all
        except (SelkieError, ValueError):
            # One ended meanwhile (1094) and stopped the list: each again, alone.
            for kill in kills:
                with contextlib.suppress(SelkieError, ValueError):
                    await self.driver.execute(endpoint_id, [kill])

    async def sample_semi_sync(self) -> None:
        """Whether each followed compute's commits wait for the safekeeper, from its
        server."""
        await self.sync.sample(list(self.endpoints))

    async def purge_binlogs(self) -> None:
        """Remove from each running compute the binary log files the archive holds whole,
        so a long-running compute's datadir does not grow by its log."""
        for st in await self.safekeeper.timelines():
            if st.endpoint_id is None or not st.streaming or st.shipped_seq == 0:
                continue
            try:
                (files,) = await self.driver.execute(st.endpoint_id, ["SHOW BINARY LOGS"])
                keep = None
                # A file can go once the next one starts at or before what the archive holds.
                for name, _size in files[1:]:
                    if not _BINLOG_NAME.match(str(name)):
                        break
                    ((pos,),) = await self.driver.execute(
                        st.endpoint_id, [f"SELECT BINLOG_GTID_POS('{name}', 4)"]
                    )
                    if domain_seq(pos[0]) > st.shipped_seq:
                        break
                    keep = str(name)
                if keep is not None:
                    await self.driver.execute(st.endpoint_id, [f"PURGE BINARY LOGS TO '{keep}'"])
            except SelkieError as exc:
                log.debug("cannot purge the binary log of %s: %s", st.endpoint_id, exc)

    def durable(self, endpoint_id: str, durability: model.Durability) -> Durable:
        """The endpoint's durability as last sampled."""
        sync = self.sync.observed.get(endpoint_id) if endpoint_id in self.endpoints else None
        return durable(endpoint_id, durability.value, self.safekeeper.status(), sync)

    async def durable_now(self, endpoint_id: str, durability: model.Durability) -> Durable:
        """The endpoint's durability with its compute asked now (for a short while)."""
        sync: SyncCommit | None = None
        if endpoint_id in self.endpoints:
            sync = await self.sync.observe(endpoint_id)
        return durable(endpoint_id, durability.value, await self.safekeeper.timelines(), sync)
