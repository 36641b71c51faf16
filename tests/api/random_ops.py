"""Weighted random REST calls from several API keys beside a client load, and the
invariants that must hold afterwards (the shape of Neon's ``random_ops`` test).

:class:`RandomOps` keeps what each key has made (projects, branches, endpoints, roles) and
calls the API at random with weights: creating and deleting branches (some set to expire
in a few seconds), starting, suspending and resizing endpoints, resetting a branch to its
parent, creating and deleting roles, creating and deleting projects, and reading lists.
Each answer is recorded. :func:`check` then says what is wrong with the platform as it
stands: any 5xx, operations that do not finish, a ``mariadbd`` without a live endpoint or
an active endpoint without its ``mariadbd``, and (from the store, once ``selkie up`` is
stopped) a usage ledger that does not alternate start and stop per endpoint.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pymysql

from tests.helpers import mariadbd_processes

# What a client may see while its endpoint is suspended, resized or woken, and retry.
RETRYABLE = {1040, 1053, 1205, 1213, 1927, 2003, 2006, 2013}


@dataclass
class Tenant:
    """One API key and what it has made."""

    client: httpx.Client
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> main branch id
    branches: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # id -> (pid, parent)
    endpoints: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (pid, branch)
    roles: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (pid, br, n)


@dataclass
class Outcome:
    calls: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    client_errors: Counter[int] = field(default_factory=Counter)
    client_messages: dict[int, str] = field(default_factory=dict)  # the first, per code
    client_queries: int = 0


class RandomOps:
    def __init__(self, tenants: list[Tenant], *, seed: int) -> None:
        self.tenants = tenants
        self.rng = random.Random(seed)
        self.out = Outcome()
        self._n = 0
        self.ops: list[tuple[float, Callable[[Tenant], None]]] = [
            (1.0, self.create_project),
            (0.3, self.delete_project),
            (3.0, self.create_branch),
            (2.0, self.delete_branch),
            (3.0, self.start),
            (3.0, self.suspend),
            (2.0, self.resize),
            (1.0, self.reset_branch),
            (1.0, self.create_role),
            (1.0, self.delete_role),
            (2.0, self.read),
        ]

    # --- the calls ----------------------------------------------------------------------------

    def call(self, t: Tenant, name: str, method: str, url: str, **kw: Any) -> httpx.Response:
        r = t.client.request(method, url, **kw)
        self.out.calls[name] += 1
        self.out.statuses[r.status_code] += 1
        if r.status_code >= 500:
            self.out.server_errors.append(f"{name} {method} {url}: {r.status_code} {r.text}")
        return r

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def create_project(self, t: Tenant) -> None:
        if len(t.projects) >= 2:
            return
        r = self.call(t, "create_project", "POST", "/v1/projects", json={"project": {}})
        if r.status_code == 201:
            body = r.json()
            pid, main = body["project"]["id"], body["branch"]["id"]
            t.projects[pid] = {"main": main}
            t.branches[main] = (pid, None)
            for e in body["endpoints"]:
                t.endpoints[e["id"]] = (pid, main)

    def delete_project(self, t: Tenant) -> None:
        if len(t.projects) < 2:
            return  # keep one: the client load runs there
        pid = self.rng.choice(list(t.projects)[1:])
        r = self.call(t, "delete_project", "DELETE", f"/v1/projects/{pid}")
        if r.status_code == 200:
            del t.projects[pid]
            t.branches = {b: v for b, v in t.branches.items() if v[0] != pid}
            t.endpoints = {e: v for e, v in t.endpoints.items() if v[0] != pid}
            t.roles = {n: v for n, v in t.roles.items() if v[0] != pid}

    def create_branch(self, t: Tenant) -> None:
        if not t.branches or len(t.branches) > 8:
            return
        parent = self.rng.choice(list(t.branches))
        pid = t.branches[parent][0]
        spec: dict[str, Any] = {"name": self._name("b"), "parent_id": parent}
        if self.rng.random() < 0.3:  # some go by themselves, through the leader
            when = datetime.now(UTC) + timedelta(seconds=self.rng.uniform(3, 10))
            spec["expires_at"] = when.isoformat()
        body = {"branch": spec, "endpoints": [{"type": "read_write"}]}
        r = self.call(t, "create_branch", "POST", f"/v1/projects/{pid}/branches", json=body)
        if r.status_code == 201:
            made = r.json()
            t.branches[made["branch"]["id"]] = (pid, parent)
            for e in made["endpoints"]:
                t.endpoints[e["id"]] = (pid, made["branch"]["id"])

    def delete_branch(self, t: Tenant) -> None:
        children = [b for b, (_, parent) in t.branches.items() if parent is not None]
        if not children:
            return
        bid = self.rng.choice(children)
        pid = t.branches[bid][0]
        r = self.call(t, "delete_branch", "DELETE", f"/v1/projects/{pid}/branches/{bid}")
        if r.status_code in (200, 404):
            self._forget_branch(t, bid)

    def _forget_branch(self, t: Tenant, bid: str) -> None:
        t.branches.pop(bid, None)
        t.endpoints = {e: v for e, v in t.endpoints.items() if v[1] != bid}

    def _endpoint(self, t: Tenant) -> tuple[str, str] | None:
        if not t.endpoints:
            return None
        eid = self.rng.choice(list(t.endpoints))
        return eid, t.endpoints[eid][0]

    def start(self, t: Tenant) -> None:
        if (found := self._endpoint(t)) is not None:
            eid, pid = found
            r = self.call(t, "start", "POST", f"/v1/projects/{pid}/endpoints/{eid}/start")
            self._gone(t, r, eid)

    def suspend(self, t: Tenant) -> None:
        if (found := self._endpoint(t)) is not None:
            eid, pid = found
            r = self.call(t, "suspend", "POST", f"/v1/projects/{pid}/endpoints/{eid}/suspend")
            self._gone(t, r, eid)

    def resize(self, t: Tenant) -> None:
        if (found := self._endpoint(t)) is not None:
            eid, pid = found
            low = self.rng.choice([0.25, 0.5])
            high = self.rng.choice([low, 1.0, 2.0])
            body = {"endpoint": {"autoscaling_limit_min_cu": low, "autoscaling_limit_max_cu": high}}
            r = self.call(t, "resize", "PATCH", f"/v1/projects/{pid}/endpoints/{eid}", json=body)
            self._gone(t, r, eid)

    def _gone(self, t: Tenant, r: httpx.Response, eid: str) -> None:
        if r.status_code == 404:  # its branch expired or was deleted with it
            branch = t.endpoints.pop(eid, ("", ""))[1]
            if branch and branch not in {b for _, b in t.endpoints.values()}:
                t.branches.pop(branch, None)

    def reset_branch(self, t: Tenant) -> None:
        children = [(b, p) for b, (_, p) in t.branches.items() if p is not None]
        if not children:
            return
        bid, parent = self.rng.choice(children)
        pid = t.branches[bid][0]
        r = self.call(
            t,
            "reset_branch",
            "POST",
            f"/v1/projects/{pid}/branches/{bid}/restore",
            json={"source_branch_id": parent},
        )
        if r.status_code == 404:
            self._forget_branch(t, bid)

    def create_role(self, t: Tenant) -> None:
        if not t.branches:
            return
        bid = self.rng.choice(list(t.branches))
        pid = t.branches[bid][0]
        name = self._name("r")
        r = self.call(
            t,
            "create_role",
            "POST",
            f"/v1/projects/{pid}/branches/{bid}/roles",
            json={"role": {"name": name}},
        )
        if r.status_code == 201:
            t.roles[name] = (pid, bid, name)

    def delete_role(self, t: Tenant) -> None:
        if not t.roles:
            return
        name = self.rng.choice(list(t.roles))
        pid, bid, _ = t.roles.pop(name)
        self.call(t, "delete_role", "DELETE", f"/v1/projects/{pid}/branches/{bid}/roles/{name}")

    def read(self, t: Tenant) -> None:
        for pid in list(t.projects)[:1]:
            for what in ("branches", "endpoints", "operations"):
                self.call(t, f"list_{what}", "GET", f"/v1/projects/{pid}/{what}")
        self.call(t, "list_projects", "GET", "/v1/projects")

    # --- running ------------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        weights = [w for w, _ in self.ops]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t = self.rng.choice(self.tenants)
            (op,) = self.rng.choices([f for _, f in self.ops], weights)
            op(t)


def client_load(
    connect: Callable[[], pymysql.Connection[Any]], out: Outcome, stop: threading.Event
) -> None:
    """Insert and read back on one endpoint until ``stop``; errors counted by code (a client
    reconnects after any of them)."""
    conn = None
    n = 0
    while not stop.is_set():
        try:
            if conn is None:
                conn = connect()
                with conn.cursor() as cur:
                    cur.execute("CREATE TABLE IF NOT EXISTS soak (i INT PRIMARY KEY)")
            n += 1
            with conn.cursor() as cur:
                cur.execute("INSERT INTO soak VALUES (%s) ON DUPLICATE KEY UPDATE i = i", (n,))
                cur.execute("SELECT COUNT(*) FROM soak")
            out.client_queries += 1
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
            out.client_errors[code] += 1
            out.client_messages.setdefault(code, str(exc))
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.2)
    if conn is not None:
        conn.close()


def check_settled(tenants: list[Tenant], data_dir: Path, *, timeout: float) -> list[str]:
    """What is wrong once the calls stop: operations not finished within ``timeout`` (or
    failed), and computes that do not match their endpoints."""
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while True:
        pending, failed = [], []
        for t in tenants:
            for pid in t.projects:
                ops = t.client.get(f"/v1/projects/{pid}/operations", params={"limit": 500})
                for op in ops.json()["operations"]:
                    if op["status"] in ("scheduling", "running"):
                        pending.append(f"{op['action']} {op['id']} {op['status']}")
                    elif op["status"] == "failed":
                        failed.append(f"{op['action']} {op['id']}: {op.get('error')}")
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    problems += [f"operation not finished: {p}" for p in pending]
    problems += [f"operation failed: {f}" for f in failed]
    states: dict[str, dict[str, Any]] = {}
    for t in tenants:
        for pid in t.projects:
            for e in t.client.get(f"/v1/projects/{pid}/endpoints").json()["endpoints"]:
                states[e["id"]] = e
    running = mariadbd_processes(data_dir)
    for eid in sorted(running):
        e = states.get(eid)
        if e is None:
            problems.append(f"mariadbd {running[eid]} runs for endpoint {eid}, which is gone")
        elif e["current_state"] != "active" and e.get("suspend_tier") != "warm":
            problems.append(f"mariadbd runs for endpoint {eid} in state {e['current_state']}")
    for eid, e in sorted(states.items()):
        if e["current_state"] == "active" and eid not in running:
            problems.append(f"endpoint {eid} is active without a mariadbd")
    return problems


def check_ledger(store_file: Path) -> list[str]:
    """Per endpoint, usage events start, (resize…), stop, in that order, ending stopped (the
    platform was stopped): a start without a stop bills for ever, a stop without a start
    bills nothing that ran."""
    problems = []
    db = sqlite3.connect(store_file)
    try:
        rows = db.execute(
            "SELECT endpoint_id, kind, at, generation FROM usage_events ORDER BY endpoint_id, id"
        ).fetchall()
    finally:
        db.close()
    by_endpoint: dict[str, list[str]] = {}
    for endpoint_id, kind, _, _ in rows:
        by_endpoint.setdefault(endpoint_id, []).append(kind)
    for endpoint_id, kinds in by_endpoint.items():
        running = False
        for kind in kinds:
            if (kind == "start" and running) or (kind in ("stop", "resize") and not running):
                problems.append(f"usage of {endpoint_id}: {' '.join(kinds)}")
                break
            running = kind != "stop"
        else:
            if running:
                problems.append(f"usage of {endpoint_id} never stops: {' '.join(kinds)}")
    return problems
