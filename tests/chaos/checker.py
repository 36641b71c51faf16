"""The checker: judges a history after the run, with no access to the database.

Rules (docs/reliability.md says them for people):

bank — every balance read that was answered sees the total the accounts started with, and
no negative balance.

append — each client appends 1, 2, 3, … to its own list, one append at a time; reads read
every list in one statement. For every list:
- *lost*: an append answered OK before a read began is in that read;
- *stale*: a value some read saw, which ended before this read began, is in this read too
  (a read that sees a later state and then an earlier one);
- *order*: the values whose appends were answered OK appear in the order they were appended;
- *phantom*: a read holds only values that were appended and not refused, each once.
An append whose answer never came (``info``) may or may not be there: it is never lost, but
once a read has seen it, every later read must.

errors — every client error whose code is not in history.RETRYABLE is reported, but for
history.KNOWN's codes while a fault of their kinds is under way, which are counted apart.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.chaos.history import KNOWN, RETRYABLE, History, Op, Outcome


@dataclass
class Report:
    lost: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    ops: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[int] = field(default_factory=Counter)

    @property
    def valid(self) -> bool:
        return not (self.lost or self.anomalies or self.unexpected)

    def summary(self, limit: int = 10) -> str:
        lines = [
            f"lost {len(self.lost)}, anomalies {len(self.anomalies)}, "
            f"unexpected errors {len(self.unexpected)}, known errors {len(self.known)}"
        ]
        for name, found in (
            ("lost", self.lost),
            ("anomaly", self.anomalies),
            ("unexpected", self.unexpected),
            ("known", self.known),
        ):
            lines += [f"  {name}: {x}" for x in found[:limit]]
        return "\n".join(lines)


def check(
    history: History,
    *,
    accounts: int,
    balance: int,
    known: dict[int, tuple[str, ...]] = KNOWN,
) -> Report:
    report = Report()
    for op in history.ops:
        report.ops[op.kind, op.outcome.value] += 1
        if op.outcome is not Outcome.OK:
            report.errors[op.error or 0] += 1
            if op.error in RETRYABLE:
                continue
            what = _describe(op, f"error {op.error}: {op.message}")
            during = set(history.during(op.start, op.end)) & set(known.get(op.error or 0, ()))
            if during:
                report.known.append(f"{what} (during {', '.join(sorted(during))})")
            else:
                report.unexpected.append(what)
    check_bank(history.ops, accounts * balance, report)
    check_append(history.ops, report)
    return report


def check_bank(ops: list[Op], total: int, report: Report) -> None:
    for op in ops:
        if op.kind != "balance" or op.outcome is not Outcome.OK:
            continue
        balances: dict[int, int] = op.result
        if sum(balances.values()) != total:
            report.anomalies.append(
                _describe(op, f"total {sum(balances.values())} instead of {total}: {balances}")
            )
        negative = {k: v for k, v in balances.items() if v < 0}
        if negative:
            report.anomalies.append(_describe(op, f"negative balances {negative}"))


def check_append(ops: list[Op], report: Report) -> None:
    appends = [op for op in ops if op.kind == "append"]
    reads = sorted(
        (op for op in ops if op.kind == "read" and op.outcome is Outcome.OK),
        key=lambda op: op.start,
    )
    # What each value's append came to, by list.
    outcome: dict[int, dict[int, Op]] = defaultdict(dict)
    for op in appends:
        outcome[op.client][op.value] = op
    # When each value became required in every later read: when its append was answered
    # OK, or when the first read that saw it ended, whichever came first.
    required: dict[int, dict[int, float]] = defaultdict(dict)
    for op in appends:
        if op.outcome is Outcome.OK:
            required[op.client][op.value] = op.end
    for read in reads:
        for lst, got in read.result.items():
            need = required[lst]
            for v in got:
                if v not in need or read.end < need[v]:
                    need[v] = read.end
    by_time: dict[int, tuple[list[float], list[int]]] = {}
    for lst, need in required.items():
        pairs = sorted((t, v) for v, t in need.items())
        by_time[lst] = ([t for t, _ in pairs], [v for _, v in pairs])

    for read in reads:
        for lst in set(read.result) | set(by_time):
            values: Sequence[int] = read.result.get(lst, ())
            seen = set(values)
            _phantoms_and_order(read, lst, values, outcome[lst], report)
            if lst not in by_time:
                continue
            times, ordered = by_time[lst]
            # The values required of this read are a prefix of ``ordered``: when the read
            # holds as many of them as the prefix is long (no duplicates: checked above),
            # none is missing, and the read costs its own length, not the history's.
            k = bisect.bisect_left(times, read.start)
            need = required[lst]
            if sum(1 for v in seen if need.get(v, read.start) < read.start) == k:
                continue
            for v in ordered[:k]:
                if v in seen:
                    continue
                missing = outcome[lst].get(v)
                if (
                    missing is not None
                    and missing.outcome is Outcome.OK
                    and missing.end < read.start
                ):
                    report.lost.append(
                        _describe(
                            read,
                            f"list {lst} lacks {v}, acknowledged at {missing.end:.3f} "
                            f"(append {missing.start:.3f}-{missing.end:.3f})",
                        )
                    )
                else:
                    report.anomalies.append(
                        _describe(
                            read,
                            f"stale: list {lst} lacks {v}, which a read that ended at "
                            f"{need[v]:.3f} saw",
                        )
                    )


def _phantoms_and_order(
    read: Op, lst: int, values: Sequence[int], appends: dict[int, Op], report: Report
) -> None:
    counts = Counter(values)
    for v, n in counts.items():
        if n > 1:
            report.anomalies.append(_describe(read, f"list {lst} holds {v} {n} times"))
        op = appends.get(v)
        if op is None:
            report.anomalies.append(_describe(read, f"list {lst} holds {v}, never appended"))
        elif op.outcome is Outcome.FAIL:
            report.anomalies.append(
                _describe(read, f"list {lst} holds {v}, whose append failed ({op.error})")
            )
    acked = [v for v in values if (op := appends.get(v)) and op.outcome is Outcome.OK]
    if any(a >= b for a, b in itertools.pairwise(acked)):
        report.anomalies.append(_describe(read, f"list {lst} out of order: {list(values)}"))


def _describe(op: Op, what: str) -> str:
    return f"{op.kind} by client {op.client} at {op.start:.3f}-{op.end:.3f}: {what}"
