"""A compute whose disk is full, told from its server's own error log.

MariaDB says so in several ways, by engine and by what it was writing: InnoDB's
``preallocating … failed with error 28`` and ``[FATAL] InnoDB: Error (Out of disk space)``
(after which it aborts), ``Disk full (…); waiting for someone to free some space…
(errno: 28 "No space left on device")`` from the binary log and the Aria/MyISAM writers
(which then wait, retrying every minute), ``Got error 28 from storage engine``. Errno 28 is
ENOSPC on Linux. Only the lines of the server's current run count: a disk that was full
once and freed since says nothing about now. The parsing is pure (tested on byte-exact
lines); which log to read is the driver's (``ComputeDriver.error_log_tail``).
"""

from __future__ import annotations

import re

# Lines an error log tail is read with, to reach back past a crash's backtrace (~60 lines).
LOG_LINES = 400

_ENOSPC = re.compile(
    r"\berror:? 28\b|\berrno:? 28\b|\bErrcode: 28\b|\bOS error: 28\b"
    r"|No space left on device|\bDisk (?:is )?full\b|Out of disk space",
    re.IGNORECASE,
)
# Each start of the server writes this first: where its current run begins.
_STARTED = re.compile(r"\[Note\] Starting MariaDB .* as process \d+")
# "2026-12-07  2:08:49 8 [ERROR] " before the message.
_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d\s+\d{1,2}:\d\d:\d\d\s+\d+\s+\[\w+\]\s+")


def disk_full(log: str) -> str | None:
    """The first line of the server's current run that says its disk is full (without its
    timestamp), or None."""
    lines = log.splitlines()
    start = max((i for i, line in enumerate(lines) if _STARTED.search(line)), default=0)
    for line in lines[start:]:
        if _ENOSPC.search(line):
            return _PREFIX.sub("", line.strip())[:300]
    return None


_REASON = "the compute's disk is full"


def disk_full_reason(evidence: str) -> str:
    """The failure reason of a compute whose disk is full."""
    return f"{_REASON} ({evidence}); make room on it (or grow it), then connect again"


def with_cause(reason: str, log: str) -> str:
    """``reason`` (a symptom: an abort, unanswered checks) with a full disk named first
    when the log says so and the reason does not already."""
    if reason.startswith(_REASON):
        return reason
    evidence = disk_full(log)
    return reason if evidence is None else f"{disk_full_reason(evidence)}. {reason}"
