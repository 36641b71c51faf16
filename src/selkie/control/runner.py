"""The operations runner: executes queued operations asynchronously, with retries.

An operation is claimed with a compare-and-set on its status (``scheduling`` → ``running``),
so two control planes never run the same one. Operations of one endpoint (or of one branch,
for branch-level actions) run one at a time, in the order they were queued. A failure is
retried with exponential backoff; after ``max_attempts`` the operation is ``failed`` with
the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from selkie import model
from selkie.control.lifecycle import Lifecycle
from selkie.control.restores import Restorer
from selkie.errors import InvalidInput, NotFound, SelkieError, public_message
from selkie.model import OperationAction, OperationStatus, utcnow
from selkie.store import Store, convert
from selkie.store.tables import BranchRow, EndpointRow, OperationRow, ProjectRow
from selkie.tasks import cancel, spawn

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
MAX_CONCURRENCY = 8
# A running operation's updated_at is touched this often by the control plane running it;
# one untouched for STALE_AFTER belongs to a control plane that died, and is run again.
HEARTBEAT_SECONDS = 5.0
STALE_AFTER = timedelta(seconds=20)


class OperationsRunner:
    def __init__(
        self,
        *,
        store: Store,
        lifecycle: Lifecycle,
        restorer: Restorer | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.restorer = restorer
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._busy: set[str] = set()
        self._running: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENCY)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mine: set[str] = set()  # ids of the operations this process is running
        self._last_heartbeat = 0.0

    # --- lifecycle of the runner -----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.on_operations_queued.append(self.kick)
        self._task = spawn(self._main(), name="operations-runner")

    async def stop(self) -> None:
        if self.kick in self.store.on_operations_queued:
            self.store.on_operations_queued.remove(self.kick)
        await cancel(self._task)
        for task in list(self._running):
            await cancel(task)

    def kick(self) -> None:
        """Look for work now (thread-safe: called after commits in worker threads)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup.set)

    async def _main(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                if time.monotonic() - self._last_heartbeat >= HEARTBEAT_SECONDS:
                    self._last_heartbeat = time.monotonic()
                    await asyncio.to_thread(self._heartbeat)
                await self.run_once()
            except SelkieError as exc:
                log.error("operations runner: %s", exc.message)
            except Exception:
                log.exception("operations runner pass failed; going on")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), POLL_SECONDS)

    def _heartbeat(self) -> None:
        """Show the operations this process runs as alive; run again those of a control
        plane that stopped showing its own."""
        now = self.clock()
        mine = list(self._mine)
        with self.store.write() as s:
            if mine:
                s.execute(
                    update(OperationRow)
                    .where(OperationRow.id.in_(mine))
                    .where(OperationRow.status == OperationStatus.RUNNING.value)
                    .values(updated_at=now)
                    .execution_options(synchronize_session=False)
                )
        requeued = requeue_interrupted(self.store, stale_after=STALE_AFTER, now=now, keep=mine)
        if requeued:
            log.warning("requeued %d operations of a control plane that stopped", requeued)
            self.kick()

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Until nothing is queued or running (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = await asyncio.to_thread(self._pending_count)
            if pending == 0 and not self._running:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError("operations still pending")

    def _pending_count(self) -> int:
        with self.store.read() as s:
            return len(
                s.execute(
                    select(OperationRow.id).where(
                        OperationRow.status.in_(
                            [OperationStatus.SCHEDULING.value, OperationStatus.RUNNING.value]
                        )
                    )
                ).all()
            )

    # --- claiming --------------------------------------------------------------------------

    @staticmethod
    def _key(op: OperationRow) -> str:
        return op.endpoint_id or op.branch_id or op.project_id

    def _claim(self) -> list[model.Operation]:
        """Claim every runnable operation whose endpoint (or branch) is not busy."""
        now = self.clock()
        claimed: list[model.Operation] = []
        blocked = set(self._busy)
        with self.store.write() as s:
            # Keys another control plane is working on wait too, not only this process's.
            for running in s.execute(
                select(OperationRow).where(OperationRow.status == OperationStatus.RUNNING.value)
            ).scalars():
                blocked.add(self._key(running))
            # Only the oldest waiting operation of each endpoint (or branch) can run next:
            # taking those, oldest first, is fair whatever one tenant has queued.
            key = func.coalesce(
                OperationRow.endpoint_id, OperationRow.branch_id, OperationRow.project_id
            )
            order = func.row_number().over(
                partition_by=key, order_by=(OperationRow.created_at, OperationRow.id)
            )
            heads = (
                select(OperationRow.id, order.label("n"))
                .where(OperationRow.status == OperationStatus.SCHEDULING.value)
                .subquery()
            )
            rows = s.execute(
                select(OperationRow)
                .join(heads, heads.c.id == OperationRow.id)
                .where(heads.c.n == 1)
                .order_by(OperationRow.created_at, OperationRow.id)
                .limit(200)
            ).scalars()
            for row in rows:
                if self._key(row) in blocked:
                    continue
                if row.retry_at is not None and row.retry_at > now:
                    continue
                won = s.execute(
                    update(OperationRow)
                    .where(OperationRow.id == row.id)
                    .where(OperationRow.status == OperationStatus.SCHEDULING.value)
                    .values(status=OperationStatus.RUNNING.value, updated_at=now)
                    .returning(OperationRow.id)
                    .execution_options(synchronize_session=False)
                ).first()
                if won:
                    claimed.append(convert.operation(row))
        return claimed

    async def run_once(self) -> int:
        """Claim what can run now and start it; returns how many were started."""
        claim = asyncio.ensure_future(asyncio.to_thread(self._claim))
        try:
            ops = await asyncio.shield(claim)
        except asyncio.CancelledError:
            # Stopped mid-claim: the claim's thread finishes anyway; what it took goes back
            # to the queue rather than sitting "running" with no one to run it.
            for op in await claim:
                await asyncio.to_thread(self._requeue, op.id, "the runner stopped")
            raise
        for op in ops:
            key = op.endpoint_id or op.branch_id or op.project_id
            self._busy.add(key)
            self._mine.add(op.id)
            task = spawn(self._execute(op, key), name=f"op-{op.id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return len(ops)

    # --- execution -------------------------------------------------------------------------

    async def _execute(self, op: model.Operation, key: str) -> None:
        started = time.monotonic()
        try:
            async with self._slots:
                await self._dispatch(op)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._requeue, op.id, "cancelled by shutdown")
            raise
        except NotFound as exc:
            # Deleted while it ran (a branch expired under its start, say): nothing is left
            # to do it to, and trying again cannot change that.
            gone = await asyncio.to_thread(self._target_deleted, op)
            if gone is not None:
                await asyncio.to_thread(
                    self._settle, op.id, OperationStatus.CANCELLED, gone, started
                )
            else:
                await asyncio.to_thread(self._failed, op, public_message(exc), started)
        except Exception as exc:
            message = public_message(exc)
            if not isinstance(exc, SelkieError):
                log.exception("operation %s (%s) crashed", op.id, op.action.value)
            # Bad input (a restore target out of reach, say) fails at once: retrying
            # cannot make it right.
            final = isinstance(exc, InvalidInput)
            await asyncio.to_thread(self._failed, op, message, started, final)
        else:
            await asyncio.to_thread(self._finished, op.id, started)
        finally:
            self._busy.discard(key)
            self._mine.discard(op.id)
            self.kick()

    async def _dispatch(self, op: model.Operation) -> None:
        lc = self.lifecycle
        action = op.action
        if action in (OperationAction.START_COMPUTE, OperationAction.RESTART_COMPUTE):
            assert op.endpoint_id is not None
            if action is OperationAction.RESTART_COMPUTE:
                await lc.restart(op.endpoint_id)
            else:
                await lc.start(op.endpoint_id)
        elif action is OperationAction.SUSPEND_COMPUTE:
            assert op.endpoint_id is not None
            await lc.suspend(op.endpoint_id)
        elif action is OperationAction.APPLY_CONFIG:
            assert op.endpoint_id is not None
            with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to apply
                if "durability" in op.payload:
                    await lc.apply_durability(op.endpoint_id)
                else:
                    await lc.apply_config(op.endpoint_id)
        elif action in (OperationAction.CREATE_TIMELINE, OperationAction.CREATE_BRANCH):
            assert op.branch_id is not None
            found = await asyncio.to_thread(self.branch_and_project, op.branch_id)
            if found is not None:
                await lc.ensure_branch_data(*found)
        elif action is OperationAction.RESTORE_BRANCH:
            if self.restorer is None:
                raise SelkieError("restores need the archive, which is off")
            await self.restorer.restore_branch(op)
        elif action is OperationAction.DELETE_ENDPOINT:
            assert op.endpoint_id is not None
            await lc.destroy(op.endpoint_id)
        elif action in (
            OperationAction.DELETE_TIMELINE,
            OperationAction.DELETE_PROJECT,
            OperationAction.EXPIRE_BRANCH,
        ):
            for endpoint_id in op.payload.get("endpoint_ids", []):
                await lc.destroy(endpoint_id)
            branch_ids = op.payload.get("branch_ids") or ([op.branch_id] if op.branch_id else [])
            settings = await asyncio.to_thread(self._project_settings, op.project_id)
            storage = lc.storage_for(settings)
            for branch_id in branch_ids:
                await storage.delete_branch(branch_id)
        else:
            raise SelkieError(f"unknown operation action {action.value}")

    def branch_and_project(self, branch_id: str) -> tuple[BranchRow, model.Project] | None:
        with self.store.read() as s:
            branch = s.get(BranchRow, branch_id)
            if branch is None or branch.deleted_at is not None:
                return None  # deleted before its data was made: nothing to do
            project = s.get(ProjectRow, branch.project_id)
            if project is None:
                return None
            return branch, convert.project(project, proxy_host="")

    def _project_settings(self, project_id: str) -> model.ProjectSettings:
        with self.store.read() as s:
            project = s.get(ProjectRow, project_id)
            return (
                convert.project_settings(project.settings) if project else model.ProjectSettings()
            )

    # --- outcomes --------------------------------------------------------------------------

    def _finished(self, op_id: str, started: float) -> None:
        self._settle(op_id, OperationStatus.FINISHED, None, started)

    def _settle(
        self, op_id: str, status: OperationStatus, error: str | None, started: float
    ) -> None:
        with self.store.write() as s:
            row = s.get(OperationRow, op_id)
            if row is not None:
                row.status = status.value
                row.error = error
                row.retry_at = None
                row.total_duration_ms += int((time.monotonic() - started) * 1000)

    def _failed(
        self, op: model.Operation, message: str, started: float, final: bool = False
    ) -> None:
        with self.store.write() as s:
            row = s.get(OperationRow, op.id)
            if row is None:
                return
            row.failures_count += 1
            row.error = message[:4000]
            row.total_duration_ms += int((time.monotonic() - started) * 1000)
            if final or row.failures_count >= self.max_attempts:
                row.status = OperationStatus.FAILED.value
                log.error("operation %s (%s) failed: %s", op.id, op.action.value, message)
            else:
                delay = min(self.backoff_max, self.backoff_base * 2 ** (row.failures_count - 1))
                row.status = OperationStatus.SCHEDULING.value
                row.retry_at = self.clock() + timedelta(seconds=delay)
                log.warning(
                    "operation %s (%s) failed, retrying in %.1fs: %s",
                    op.id,
                    op.action.value,
                    delay,
                    message,
                )

    def _target_deleted(self, op: model.Operation) -> str | None:
        """Why ``op`` has nothing left to act on (its endpoint or branch was deleted), or
        None."""
        with self.store.read() as s:
            if op.endpoint_id is not None:
                ep = s.get(EndpointRow, op.endpoint_id)
                if ep is None or ep.deleted_at is not None:
                    return "the endpoint was deleted"
            if op.branch_id is not None:
                branch = s.get(BranchRow, op.branch_id)
                if branch is None or branch.deleted_at is not None:
                    return "the branch was deleted"
        return None

    def _requeue(self, op_id: str, why: str) -> None:
        with self.store.write() as s:
            row = s.get(OperationRow, op_id)
            if row is not None and row.status == OperationStatus.RUNNING.value:
                row.status = OperationStatus.SCHEDULING.value
                row.error = why


def requeue_interrupted(
    store: Store,
    *,
    stale_after: timedelta | None = None,
    now: datetime | None = None,
    keep: Collection[str] = (),
) -> int:
    """Operations left ``running`` by a control plane that died go back to the queue (their
    actions are idempotent, so running them again finishes them). With ``stale_after``,
    only those whose control plane has not shown them alive for that long (others may be
    running elsewhere); ``keep`` are this process's own. Returns how many."""
    with store.write() as s:
        stmt = update(OperationRow).where(OperationRow.status == OperationStatus.RUNNING.value)
        if stale_after is not None:
            stmt = stmt.where(OperationRow.updated_at < (now or utcnow()) - stale_after)
        if keep:
            stmt = stmt.where(OperationRow.id.not_in(list(keep)))
        result = s.execute(
            stmt.values(
                status=OperationStatus.SCHEDULING.value,
                error="interrupted by a control plane that stopped; retried",
                retry_at=None,
            )
            .returning(OperationRow.id)
            .execution_options(synchronize_session=False)
        )
        return len(result.all())
