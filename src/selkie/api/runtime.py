"""What the API asks of the process it runs in, beyond the control-plane services."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from fastapi import Request

from selkie.control.durability import Durable
from selkie.control.replicas import ReplicaStatus
from selkie.model import Durability


class Runtime(Protocol):
    """The computes, the proxy and the scheduler this process runs, as the API sees them
    (:class:`selkie.platform.Platform` is one). An app built without one (tests, tools)
    answers as a process that runs none of them: no pool metrics, no starts, a Conflict
    for what needs a compute."""

    def is_leader(self) -> bool:
        """Whether this process's scheduler holds the leader's lock now."""
        ...

    def prometheus(self) -> bytes:
        """This process's metrics, in Prometheus's text format."""
        ...

    def pool_metrics(self, endpoint_id: str) -> dict[str, int]:
        """The in-process proxy's pool metrics for the endpoint (empty: none)."""
        ...

    def recent_starts(self, endpoint_id: str) -> list[tuple[datetime, float]]:
        """The endpoint's last starts, oldest first: (ended at, milliseconds)."""
        ...

    async def durability(self, endpoint_id: str, durability: Durability) -> Durable:
        """How durable the endpoint's commits are now (a Conflict where the archive is
        off)."""
        ...

    async def replica_status(self, endpoint_id: str) -> ReplicaStatus:
        """A read-only compute's replication, asked of its server now."""
        ...

    async def compare_schema(self, base_branch_id: str, branch_id: str, database: str) -> str:
        """The unified diff of a database's schema on two branches (their endpoints
        woken)."""
        ...


def runtime_of(request: Request) -> Runtime | None:
    """The runtime of the app serving the request (None: the app was built without one)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    return runtime
