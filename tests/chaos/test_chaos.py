"""The short chaos run: bank and append clients (plain and pooled) on a real `selkie up`
while the nemesis kills the compute, kills `selkie up` and starts it again, suspends,
freezes (warm) and resizes; the checker finds no acknowledged write lost, no anomaly and no
error a client should not see. The long run with every fault is bench/chaos.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from selkie.compute.cgroups import Cgroups
from tests.chaos.cluster import Cluster
from tests.chaos.runner import run_chaos
from tests.conftest import need_service

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

SHORT_FAULTS = ("kill_compute", "kill_up", "suspend", "freeze", "resize")


def test_no_acknowledged_write_is_lost_under_faults(tmp_path: Path, template_datadir: Path) -> None:
    if os.geteuid() != 0 or not Cgroups(enabled=True).can_freeze:
        need_service("a cgroup freezer", "the warm freeze fault needs root and a freezer")
    seed = int(os.environ.get("SELKIE_CHAOS_SEED", random.randrange(1 << 30)))
    cluster = Cluster(tmp_path, template=template_datadir)
    try:
        result = run_chaos(cluster, seconds=30, faults=SHORT_FAULTS, interval=(2, 4), seed=seed)
    finally:
        cluster.stop()
    result.history.dump(tmp_path / "history.jsonl")
    report = result.report
    for kind, start, end in result.history.faults:
        print(f"fault {kind} {start:.3f}-{end:.3f}")
    injected = {kind.split(":")[0] for kind, _, _ in result.history.faults}
    print(f"seed {seed}: {sum(report.ops.values())} ops, faults {sorted(injected)}")
    print(report.summary(limit=20))
    assert report.valid, f"seed {seed}\n{report.summary(limit=20)}"
    assert not result.nemesis_errors, result.nemesis_errors
    assert injected == set(SHORT_FAULTS), injected
    # The workloads did work: acknowledged transfers, appends and reads of both.
    for kind in ("transfer", "balance", "append", "read"):
        assert report.ops[kind, "ok"] > 0, report.ops
