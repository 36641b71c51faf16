"""The ComputeDriver boundary: what the control plane needs from a place that runs computes.

A compute is one ``mariadbd`` for one endpoint. Drivers (local processes, Kubernetes) own
where and how it runs; the control plane owns *whether* it should run (the endpoint state
machine) and never touches processes or pods itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selkie.errors import ComputeError


@dataclass(frozen=True, kw_only=True)
class ComputeSpec:
    """Everything a driver needs to start one endpoint's compute."""

    endpoint_id: str
    project_id: str
    branch_id: str
    cu: float
    # The branch's datadir for local storage; a scratch dir for pageserver storage.
    datadir: Path
    # Extra server options the storage driver asks for (pageserver mode), name -> value.
    server_options: dict[str, str] = field(default_factory=dict)
    # Prefer this port (the one the endpoint had before), if it is free.
    port_hint: int | None = None
    # A different server binary (the patched one, for pageserver storage); None: default.
    binary: str | None = None
    # Start without the CPU limit of ``cu`` (memory limits stay): the control plane calls
    # end_boost() once the compute is ready and its accounts are synced.
    boost: bool = False


@dataclass(frozen=True, kw_only=True)
class ComputeInfo:
    """What a driver observes about one compute (an immutable snapshot)."""

    endpoint_id: str
    running: bool
    host: str | None = None
    port: int | None = None
    socket: Path | None = None
    pid: int | None = None

    @property
    def address(self) -> str | None:
        return f"{self.host}:{self.port}" if self.host and self.port else None


@dataclass(frozen=True, kw_only=True)
class ComputeLoad:
    """One reading of what a running compute uses, for the autoscaler. Counters only grow
    while the compute runs: the autoscaler takes rates between two readings."""

    cu: float  # the size it runs at now
    cpu_seconds: float  # CPU used since it started (all its threads)
    memory_bytes: int  # its own memory (not the page cache)
    throttled_periods: int  # scheduler periods in which it used its whole CPU quota
    pool_reads: int  # buffer pool misses that went to disk (Innodb_buffer_pool_reads)
    pool_pages_data: int  # pages of the buffer pool holding data
    pool_pages_total: int  # pages of the buffer pool


# Called when a compute exits without being asked to: (endpoint_id, reason).
ExitCallback = Callable[[str, str], Awaitable[None]]


class ComputeDriver(ABC):
    """Runs computes. Every method is idempotent and safe to call concurrently for different
    endpoints; callers serialize calls for one endpoint (the operations runner does)."""

    # Whether computes' datadirs are on this machine (the control plane may keep small
    # notes beside the data, such as the digest of the accounts last applied).
    local_datadirs = True
    # Hosts role accounts are made for: where the proxy connects to computes from.
    account_hosts: tuple[str, ...] = ("%",)

    def __init__(self) -> None:
        self._exit_callbacks: list[ExitCallback] = []
        self._waiting_callbacks: list[Callable[[str], None]] = []
        # Statements the control plane ran on each compute through execute(): an activity
        # probe tells them apart from clients' in the compute's own counters.
        self.admin_statements: dict[str, int] = {}

    def note_admin_statements(self, endpoint_id: str, statements: int) -> None:
        """Count statements the control plane ran on a compute by other means (the
        safekeeper's replication connection)."""
        self.admin_statements[endpoint_id] = self.admin_statements.get(endpoint_id, 0) + statements

    def on_unexpected_exit(self, callback: ExitCallback) -> None:
        self._exit_callbacks.append(callback)

    async def _report_exit(self, endpoint_id: str, reason: str) -> None:
        for callback in self._exit_callbacks:
            await callback(endpoint_id, reason)

    @abstractmethod
    async def start(self, spec: ComputeSpec, *, timeout: float) -> ComputeInfo:
        """Start the compute, or return the running one. Returns once the server accepts
        connections. Raises ComputeError (with the server's own error log lines) if it
        exits or is not ready within ``timeout`` seconds; nothing is left running then."""

    @abstractmethod
    async def stop(self, endpoint_id: str, *, timeout: float) -> None:
        """Clean shutdown (the server dumps its buffer pool); escalates to SIGKILL after
        ``timeout``. Returns when the process is gone. A compute not running is a no-op."""

    @abstractmethod
    async def inspect(self, endpoint_id: str) -> ComputeInfo:
        """Observe one compute now."""

    @abstractmethod
    async def list_computes(self) -> list[ComputeInfo]:
        """Every compute this driver can find running, including ones started by an earlier
        control-plane process (for the reconciler)."""

    @abstractmethod
    async def adopt(self, endpoint_id: str) -> ComputeInfo:
        """Take over supervision of a compute found running (after a control-plane restart)."""

    @abstractmethod
    async def execute(
        self, endpoint_id: str, statements: Sequence[str], *, timeout: float | None = None
    ) -> list[list[tuple[Any, ...]]]:
        """Run SQL as the internal admin account; returns each statement's rows. With a
        ``timeout`` (seconds), a server that does not answer in it (held by a signal, say)
        is a ComputeError, and nothing is left waiting on it."""

    @abstractmethod
    async def remove(self, endpoint_id: str) -> None:
        """Forget a stopped compute: its runtime files (never the branch's data)."""

    @abstractmethod
    def error_log_tail(self, endpoint_id: str, *, lines: int = 15) -> str:
        """The last lines of the compute's own error log, for failure reasons."""

    # Whether resize() changes a running compute's size without a restart.
    supports_resize = False
    # Whether paused() can hold a running compute still (for copy-on-write branching).
    supports_pause = False

    def paused(self, endpoint_id: str) -> AbstractAsyncContextManager[None]:
        """Hold a running compute still for the block: every thread stopped, nothing new
        written (its files are then a crash-consistent image)."""
        raise ComputeError("this compute driver cannot pause computes")

    # Whether freeze() can hold a compute still without stopping it (warm suspend).
    supports_freeze = False

    async def freeze(self, endpoint_id: str) -> None:
        """Warm suspend: make the running compute give back what is cheap to rebuild (its
        buffer pool), then freeze it: no CPU, its memory and connections kept. While frozen,
        execute() refuses at once (ComputeError) rather than wait. Raises ComputeError and
        leaves it running when it cannot be frozen."""
        raise ComputeError("this compute driver cannot freeze computes")

    async def thaw(self, endpoint_id: str, *, cu: float) -> ComputeInfo | None:
        """Let a frozen compute run again at size ``cu`` (its buffer pool grows back in the
        background) and return it; None when there is no such compute to thaw (it was never
        frozen here, or died): the caller starts it instead."""
        return None

    def is_frozen(self, endpoint_id: str) -> bool:
        return False

    def memory(self, endpoint_id: str) -> int | None:
        """The memory a compute holds now (bytes), where the driver can tell."""
        return None

    def on_client_waiting(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(endpoint_id)`` (on the event loop) when a client is waiting on a
        frozen compute: a new connection, or a statement sent on a session that was open
        when it froze. Once per freeze."""
        self._waiting_callbacks.append(callback)

    async def end_boost(self, endpoint_id: str) -> None:
        """Give a compute started with ``boost`` its CPU limit. A no-op where there is no
        boost (or no such compute)."""

    async def resize(self, endpoint_id: str, cu: float) -> None:
        """Change a running compute's size live: CPU and memory limits, buffer pool,
        threads. Raises ComputeError and leaves the compute at its old size when a step
        fails; never restarts it."""
        raise ComputeError("this compute driver does not resize computes while they run")

    async def disk_free(self, endpoint_id: str) -> int | None:
        """Bytes free (to the server) on the filesystem of the compute's datadir; None where
        the driver cannot tell (no such compute, datadirs elsewhere)."""
        return None

    async def load(self, endpoint_id: str) -> ComputeLoad | None:
        """What the compute uses now; None where the driver cannot tell (or it is not
        running)."""
        return None

    async def close(self) -> None:
        """Stop supervising (computes keep running; the reconciler adopts them later)."""
