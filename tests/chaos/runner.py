"""One chaos run, for the test and for bench/chaos.py: a cluster, the clients, the nemesis
for ``seconds``, a final read once it has healed, and the checker's report."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tests.chaos.checker import Report, check
from tests.chaos.cluster import Cluster
from tests.chaos.history import History, now
from tests.chaos.nemesis import Nemesis
from tests.chaos.workloads import ACCOUNTS, BALANCE, Client, Gate, final_reads, setup_schema


@dataclass
class Result:
    history: History
    report: Report
    nemesis_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_chaos(
    cluster: Cluster,
    *,
    seconds: float,
    faults: tuple[str, ...],
    bank_clients: int = 2,
    append_clients: int = 2,
    interval: tuple[float, float] = (2.0, 5.0),
    seed: int = 0,
) -> Result:
    started = now()
    cluster.start()
    assert cluster.target is not None
    setup_schema(cluster.target)
    history, gate, stop = History(), Gate(), threading.Event()
    clients = [
        Client(
            i,
            "bank" if i < bank_clients else "append",
            target=cluster.target,
            # Half the clients of each workload through the pooler, half plain.
            pooled=(i if i < bank_clients else i - bank_clients) % 2 == 0,
            history=history,
            gate=gate,
            stop=stop,
            seed=seed * 1000 + i,
        )
        for i in range(bank_clients + append_clients)
    ]
    nemesis = Nemesis(
        cluster,
        history,
        gate,
        faults=faults,
        interval=interval,
        until=now() + seconds,
        seed=seed,
    )
    for c in clients:
        c.start()
    nemesis.start()
    try:
        nemesis.join()
        # A few more seconds of load on the healed platform, then the final reads.
        stop.wait(3)
    finally:
        stop.set()
        nemesis.stop.set()
        for c in clients:
            c.join(timeout=90)
            c.drop()
    final_reads(cluster.target, history, deadline=now() + 60)
    report = check(history, accounts=ACCOUNTS, balance=BALANCE)
    return Result(history, report, nemesis.errors, now() - started)
