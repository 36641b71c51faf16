"""Live changes to a running local compute: its size (CPU and memory limits, buffer pool,
threads) and what it uses now. Used by the local driver; the autoscaler decides when.

A resize never restarts the server and never leaves it half-changed: growing sets the
limits first and then asks the server for more (a bigger pool inside the old memory limit
could be killed); shrinking asks the server first, waits until InnoDB has released the
pages, then lowers the limits. A step that fails puts back what the earlier steps changed
and raises ComputeError with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from selkie.compute.base import ComputeLoad
from selkie.compute.cgroups import Cgroups, CgroupUsage
from selkie.compute.mariadb import Sizing
from selkie.compute.procs import process_usage
from selkie.errors import ComputeError

Execute = Callable[[str, Sequence[str]], Awaitable[list[list[tuple[Any, ...]]]]]

# Memory a shrunk compute may hold besides what its buffer pool gives back, as a share of
# its new limit: above it, lowering the limit could make the kernel kill the server.
SHRINK_HEADROOM = 0.9
POOL_RESIZE_TIMEOUT = 60.0

STATUS = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_buffer_pool_reads', "
    "'Innodb_buffer_pool_pages_data', 'Innodb_buffer_pool_pages_total', "
    "'Innodb_buffer_pool_resize_status')"
)


def server_statements(sizing: Sizing) -> list[str]:
    """What the server itself changes for a size (all dynamic in MariaDB 10.11; the pool
    grows and shrinks in chunks, which the server sizes from the pool it started with)."""
    return [
        f"SET GLOBAL innodb_buffer_pool_size = {sizing.buffer_pool_bytes}",
        f"SET GLOBAL thread_pool_size = {sizing.thread_pool_size}",
        f"SET GLOBAL max_connections = {sizing.max_connections}",
    ]


def _status(rows: list[tuple[Any, ...]]) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in rows}


class LiveSizing:
    def __init__(self, cgroups: Cgroups, execute: Execute) -> None:
        self.cgroups = cgroups
        self.execute = execute

    def _limits(self, endpoint_id: str, sizing: Sizing, *, cpu: bool) -> None:
        if self.cgroups.mode == "off":
            return
        try:
            self.cgroups.set_memory(endpoint_id, sizing.memory_bytes)
            if cpu:
                self.cgroups.set_cpu(endpoint_id, sizing.cu)
        except OSError as exc:
            raise ComputeError(
                f"cannot set the limits of {sizing.cu} CU: {exc.strerror or exc}"
            ) from exc

    async def _server(self, endpoint_id: str, sizing: Sizing) -> None:
        await self.execute(endpoint_id, server_statements(sizing))
        deadline = asyncio.get_running_loop().time() + POOL_RESIZE_TIMEOUT
        while True:
            rows = await self.execute(endpoint_id, [STATUS, "SELECT @@innodb_buffer_pool_size"])
            state = _status(rows[0]).get("innodb_buffer_pool_resize_status", "")
            in_force = int(rows[1][0][0])
            if in_force == sizing.buffer_pool_bytes and (
                not state or state.startswith("Completed")
            ):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise ComputeError(
                    f"the buffer pool did not reach {sizing.buffer_pool_bytes >> 20} MiB "
                    f"(at {in_force >> 20} MiB: {state or 'no resize under way'})"
                )
            await asyncio.sleep(0.1)

    async def resize(
        self, endpoint_id: str, old_cu: float, new_cu: float, *, boosted: bool, pid: int
    ) -> None:
        old, new = Sizing.for_cu(old_cu), Sizing.for_cu(new_cu)
        if new_cu >= old_cu:
            try:
                self._limits(endpoint_id, new, cpu=not boosted)
                await self._server(endpoint_id, new)
            except ComputeError:
                await self._undo(endpoint_id, old, boosted=boosted, limits_first=False)
                raise
            return
        usage = self.usage(endpoint_id, pid)
        freed = old.buffer_pool_bytes - new.buffer_pool_bytes
        if usage is not None and usage.memory_bytes - freed > new.memory_bytes * SHRINK_HEADROOM:
            raise ComputeError(
                f"the compute holds {usage.memory_bytes >> 20} MiB; {new_cu} CU allows "
                f"{new.memory_bytes >> 20} MiB even after its buffer pool shrinks"
            )
        try:
            await self._server(endpoint_id, new)
            self._limits(endpoint_id, new, cpu=not boosted)
        except ComputeError:
            await self._undo(endpoint_id, old, boosted=boosted, limits_first=True)
            raise

    async def _undo(
        self, endpoint_id: str, old: Sizing, *, boosted: bool, limits_first: bool
    ) -> None:
        """Back to the old size after a failed step (best effort: each part on its own);
        the memory limit is never below what the server holds."""
        if limits_first:
            with contextlib.suppress(ComputeError):
                self._limits(endpoint_id, old, cpu=not boosted)
        with contextlib.suppress(ComputeError):
            await self._server(endpoint_id, old)
        if not limits_first:
            with contextlib.suppress(ComputeError):
                self._limits(endpoint_id, old, cpu=not boosted)

    def usage(self, endpoint_id: str, pid: int) -> CgroupUsage | None:
        return self.cgroups.usage(endpoint_id) or process_usage(pid)

    async def load(self, endpoint_id: str, pid: int, cu: float) -> ComputeLoad | None:
        usage = self.usage(endpoint_id, pid)
        if usage is None:
            return None
        status = _status((await self.execute(endpoint_id, [STATUS]))[0])
        return ComputeLoad(
            cu=cu,
            cpu_seconds=usage.cpu_seconds,
            memory_bytes=usage.memory_bytes,
            throttled_periods=usage.throttled_periods,
            pool_reads=int(status.get("innodb_buffer_pool_reads", 0)),
            pool_pages_data=int(status.get("innodb_buffer_pool_pages_data", 0)),
            pool_pages_total=int(status.get("innodb_buffer_pool_pages_total", 0)),
        )
