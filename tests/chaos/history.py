"""A chaos run's history: every operation a client attempted, when, and how it ended.

Shared by the workloads (which record), the checker (which judges) and bench/chaos.py.
An operation ends one of three ways, as in Jepsen: ``ok`` (the server answered it),
``fail`` (the server answered with an error, so nothing happened) or ``info`` (the answer
never came: it may or may not have taken effect, and the checker must allow both).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

# Codes a client may see while a compute is killed, suspended, frozen, resized or restored,
# or while `selkie up` restarts: each means "reconnect and try again". Anything else a
# client sees is reported by the checker as an unexpected error.
RETRYABLE: dict[int, str] = {
    2003: "cannot connect (the proxy is restarting)",
    2006: "server has gone away",
    2013: "lost connection during a query",
    1927: "connection killed (the pooler lost its backend, or a suspend's farewell)",
    1205: "lock wait timeout",
    1213: "deadlock",
    1040: "too many connections (the pooler's wait for a backend timed out)",
    1158: "the compute could not be reached after it started (docs/proxy.md)",
    1159: "the compute did not become ready in time (docs/proxy.md)",
}
# Errors the platform sends that are not clean retryable errors, tolerated only while a
# fault of these kinds is under way, and reported apart (docs/reliability.md, Findings).
# None today: the 1290 (read-only) that writes in flight got at a clean stop is gone since
# the stop ends the clients' sessions before it turns the compute read-only.
KNOWN: dict[int, tuple[str, ...]] = {}
# Server errors that say the statement did not run: a write that got one did not happen.
# Every other error leaves a write indeterminate (the connection went away while it ran).
DEFINITE: frozenset[int] = frozenset({1205, 1213, 1040, 1290})


class Outcome(StrEnum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


@dataclass
class Op:
    """One operation: ``value`` is what a write wrote (or None), ``result`` what a read read;
    ``error`` the MySQL code of a failure or an indeterminate end (0: not a MySQL error)."""

    kind: str
    client: int
    start: float
    end: float
    outcome: Outcome
    value: Any = None
    result: Any = None
    error: int | None = None
    message: str = ""


@dataclass
class History:
    """Operations recorded by many threads; ``faults`` are the nemesis's (kind, start, end)."""

    ops: list[Op] = field(default_factory=list)
    faults: list[tuple[str, float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def fault(self, kind: str, start: float, end: float) -> None:
        with self._lock:
            self.faults.append((kind, start, end))

    def dump(self, path: Path) -> None:
        """The history as JSON lines (faults first), to read after a failed run."""
        with open(path, "w") as out:
            for kind, start, end in self.faults:
                out.write(json.dumps({"fault": kind, "start": start, "end": end}) + "\n")
            for op in sorted(self.ops, key=lambda o: o.start):
                row = {k: getattr(op, k) for k in ("kind", "client", "start", "end", "error")}
                row.update(outcome=op.outcome.value, value=op.value, message=op.message)
                if op.kind == "balance":
                    row["result"] = op.result
                out.write(json.dumps(row) + "\n")

    def during(self, start: float, end: float) -> list[str]:
        """The faults under way at some time between ``start`` and ``end`` (or ended within
        the second before ``start``): an operation sent just before a fault began may be
        answered by it."""
        return [kind for kind, s, e in self.faults if s <= end and start <= e + 1]


def now() -> float:
    return time.monotonic()
