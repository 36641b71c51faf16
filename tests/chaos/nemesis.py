"""The nemesis: faults injected at random into a running Cluster, each recorded in the
History with when it began and ended."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable

from tests.chaos.cluster import Cluster
from tests.chaos.history import History, now
from tests.chaos.workloads import Gate

SIZES = [(0.25, 0.5), (0.5, 1.0), (0.25, 1.0), (0.5, 0.5)]
# Every fault the nemesis knows; `restart_postgres` needs a Cluster with its own PostgreSQL.
ALL_FAULTS = (
    "kill_compute",
    "kill_up",
    "suspend",
    "freeze",
    "resize",
    "restore",
    "stop_safekeeper",
    "restart_postgres",
)


class Nemesis(threading.Thread):
    def __init__(
        self,
        cluster: Cluster,
        history: History,
        gate: Gate,
        *,
        faults: tuple[str, ...],
        interval: tuple[float, float],
        until: float,
        seed: int,
    ) -> None:
        super().__init__(name="chaos-nemesis", daemon=True)
        self.cluster, self.history, self.gate = cluster, history, gate
        self.faults, self.interval, self.until = faults, interval, until
        self.rng = random.Random(seed)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.actions: dict[str, Callable[[], str | None]] = {
            "kill_compute": self.kill_compute,
            "kill_up": self.kill_up,
            "suspend": self.suspend,
            "freeze": self.freeze,
            "resize": self.resize,
            "restore": self.restore,
            "stop_safekeeper": self.stop_safekeeper,
            "restart_postgres": self.restart_postgres,
        }

    def run(self) -> None:
        # Every fault once in a random order, then at random: a short run still sees each,
        # even when one fault took long (a clean stop can hang 30 s, docs/reliability.md),
        # up to a minute past ``until``.
        order = list(self.faults)
        self.rng.shuffle(order)
        while not self.stop.wait(self.rng.uniform(*self.interval)):
            if now() >= self.until and (not order or now() >= self.until + 60):
                break
            kind = order.pop(0) if order else self.rng.choice(self.faults)
            start = now()
            try:
                # A fault may say what it came to (a freeze that went cold).
                kind = self.actions[kind]() or kind
            except Exception as exc:
                self.errors.append(f"{kind} at {start:.3f}: {exc!r}")
                traceback.print_exc()
            finally:
                self.gate.open()
            self.history.fault(kind, start, now())
        self.heal()

    def heal(self) -> None:
        """Leave the platform running and the clients free."""
        if self.cluster.up is None or self.cluster.up.poll() is not None:
            self.cluster.start()
        if self.cluster.safekeeper is not None:
            os.kill(self.cluster.safekeeper.pid, signal.SIGCONT)
        self.gate.open()

    # --- the faults --------------------------------------------------------------------------

    def kill_compute(self) -> None:
        """kill -9 of the endpoint's mariadbd (the clients wake another)."""
        deadline = time.monotonic() + 10
        while (pid := self.cluster.compute_pid()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no compute running to kill")
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def kill_up(self) -> None:
        """kill -9 of `selkie up`, and a new one on the same data dir after a moment."""
        self.cluster.kill_up()
        time.sleep(self.rng.uniform(0, 1))
        self.cluster.start()

    def suspend(self) -> None:
        """An explicit suspend through the API (cold: the compute stops)."""
        body = self.cluster.call("POST", f"{self.cluster.endpoint_path}/suspend")
        self.cluster.wait_operations(body["operations"])

    def freeze(self) -> str | None:
        """A warm suspend: the clients go quiet, the scheduler freezes the idle compute,
        and the clients' next statements thaw it. A compute the driver cannot freeze is
        suspended cold instead (one adopted after `selkie up` restarted): ``freeze:cold``."""
        if not self.gate.close():
            raise RuntimeError("clients did not go quiet")
        self.cluster.patch_endpoint(suspend_timeout_seconds=1)
        try:
            deadline = time.monotonic() + 30
            while True:
                ep = self.cluster.endpoint()
                if ep["current_state"] == "suspended":
                    return None if ep.get("suspend_tier") == "warm" else "freeze:cold"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not suspended: {ep['current_state']}")
                time.sleep(0.2)
        finally:
            self.cluster.patch_endpoint(suspend_timeout_seconds=300)

    def resize(self) -> None:
        """New autoscaling limits (a running compute restarts at its new size)."""
        ep = self.cluster.endpoint()
        now_size = (ep["autoscaling_limit_min_cu"], ep["autoscaling_limit_max_cu"])
        low, high = self.rng.choice([s for s in SIZES if s != now_size])
        self.cluster.patch_endpoint(autoscaling_limit_min_cu=low, autoscaling_limit_max_cu=high)

    def restore(self) -> None:
        """A restore of the branch to where it is now, clients quiet: the image and the log
        replayed by the restore must give back every acknowledged write."""
        assert self.cluster.target is not None
        if not self.gate.close():
            raise RuntimeError("clients did not go quiet")
        conn = self.cluster.target.connect(pooled=False, timeout=60)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@gtid_binlog_pos")
                ((position,),) = cur.fetchall()
        finally:
            conn.close()
        body = self.cluster.call(
            "POST",
            f"/v1/projects/{self.cluster.project_id}/branches/{self.cluster.branch_id}/restore",
            json={"source_branch_id": self.cluster.branch_id, "source_lsn": position},
        )
        self.cluster.wait_operations(body["operations"], timeout=300)

    def stop_safekeeper(self) -> None:
        """SIGSTOP of the safekeeper process for 10 s (commits wait for it, or go async)."""
        if self.cluster.safekeeper is None:
            raise RuntimeError("the safekeeper runs inside `selkie up`: cannot stop it alone")
        os.kill(self.cluster.safekeeper.pid, signal.SIGSTOP)
        try:
            time.sleep(10)
        finally:
            os.kill(self.cluster.safekeeper.pid, signal.SIGCONT)

    def restart_postgres(self) -> None:
        """The state store (a private PostgreSQL) stopped as if it crashed, and started."""
        if self.cluster.pg_dir is None:
            raise RuntimeError("the state store is not a private PostgreSQL")
        self.cluster.postgres_restart()
