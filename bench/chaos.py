"""The long chaos run: bank and append clients (plain and pooled) on a real `selkie up`, with
its safekeeper as a process of its own and its state in a private PostgreSQL, while a
nemesis injects every fault it knows at random for ``--minutes``; then the checker's
verdict as a table (docs/reliability.md).

    .venv/bin/python bench/chaos.py --minutes 5 [--bank 4] [--append 4] [--seed N]

The workloads, the nemesis and the checker are tests/chaos/'s (the short run in `make test`
uses the same modules). Exit status 1 when an acknowledged write was lost, an anomaly seen
or an unexpected client error reported.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from _common import loadavg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.cluster import Cluster
from tests.chaos.history import KNOWN, RETRYABLE
from tests.chaos.nemesis import ALL_FAULTS
from tests.chaos.runner import Result, run_chaos


def table(result: Result, load_before: str, load_after: str, seed: int) -> str:
    report = result.report
    lines = [
        f"chaos run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, seed {seed}, "
        f"{result.seconds:.0f} s wall, loadavg before {load_before}, after {load_after}",
        "",
        "| operation | ok | fail | info (indeterminate) |",
        "|---|---:|---:|---:|",
    ]
    kinds = sorted({kind for kind, _ in report.ops})
    for kind in kinds:
        ok, fail, info = (report.ops[kind, o] for o in ("ok", "fail", "info"))
        lines.append(f"| {kind} | {ok:,} | {fail:,} | {info:,} |")
    faults = Counter(kind for kind, _, _ in result.history.faults)
    lines += ["", "| fault | injected |", "|---|---:|"]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(faults.items())]
    lines += [
        "",
        "| verdict | count |",
        "|---|---:|",
        f"| acknowledged operations lost | {len(report.lost)} |",
        f"| anomalies | {len(report.anomalies)} |",
        f"| unexpected client errors | {len(report.unexpected)} |",
        f"| known errors (during their faults) | {len(report.known)} |",
        f"| nemesis errors | {len(result.nemesis_errors)} |",
        "",
        "| client error | count | meaning |",
        "|---|---:|---|",
    ]
    for code, n in sorted(report.errors.items()):
        meaning = RETRYABLE.get(code) or (
            f"known, during {'/'.join(KNOWN[code])}" if code in KNOWN else "unexpected"
        )
        lines.append(f"| {code} | {n:,} | {meaning} |")
    t0 = min((op.start for op in result.history.ops), default=0.0)
    timeline = ", ".join(
        f"{kind} +{start - t0:.0f}s ({end - start:.1f}s)"
        for kind, start, end in result.history.faults
    )
    details = [f"faults: {timeline}", f"times below are seconds of this clock, from {t0:.3f}"]
    details += report.summary(limit=10).splitlines()[1:]
    details += [f"  nemesis: {e}" for e in result.nemesis_errors[:10]]
    return "\n".join([*lines, "", *details])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--bank", type=int, default=4, help="bank clients")
    parser.add_argument("--append", type=int, default=4, help="append clients")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    root = Path(tempfile.mkdtemp(prefix="selkie-chaos-"))
    root.chmod(0o711)
    load_before = loadavg()
    cluster = Cluster(root, own_safekeeper=True, own_postgres=True)
    try:
        result = run_chaos(
            cluster,
            seconds=args.minutes * 60,
            faults=ALL_FAULTS,
            bank_clients=args.bank,
            append_clients=args.append,
            interval=(3.0, 8.0),
            seed=seed,
        )
    finally:
        cluster.stop()
    result.history.dump(root / "history.jsonl")
    print(table(result, load_before, loadavg(), seed))
    if args.keep:
        print(f"\ndata dir, logs and history.jsonl kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if result.report.valid else 1


if __name__ == "__main__":
    sys.exit(main())
