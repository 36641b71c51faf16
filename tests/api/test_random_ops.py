"""Random API operations from two organizations' keys beside a client load through the
proxy, on a real `selkie up`; then the invariants of :mod:`tests.api.random_ops`: no 5xx,
every operation finished, each mariadbd matching a live endpoint and each active endpoint
its mariadbd, and a usage ledger that alternates start and stop per endpoint.
``SELKIE_SOAK_SECONDS`` makes the run longer (20 s by default)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import httpx
import pymysql
import pytest

from tests.api.random_ops import (
    RETRYABLE,
    RandomOps,
    Tenant,
    check_ledger,
    check_settled,
    client_load,
)
from tests.helpers import connect, first_key, run, selkie_env, selkie_up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_random_api_operations_beside_a_client_load(tmp_path: Path, template_datadir: Path) -> None:
    seconds = float(os.environ.get("SELKIE_SOAK_SECONDS", "20"))
    env = selkie_env(tmp_path, template_datadir)
    log = tmp_path / "up.log"
    with selkie_up(env, log) as proc:
        url = env["SELKIE_API_URL"]
        first = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {first_key(log)}"}, timeout=60
        )
        admin = run(env, "api-keys", "create", "--name", "operator", "--admin").stdout.strip()
        operator = {"Authorization": f"Bearer {admin}"}
        org = first.post(
            "/v1/organizations", json={"organization": {"name": "rival"}}, headers=operator
        ).json()["organization"]["id"]
        key = first.post(
            "/v1/api_keys", json={"key_name": "rival", "org_id": org}, headers=operator
        ).json()["key"]
        second = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        tenants = [Tenant(first), Tenant(second)]

        # The client load: the first organization's project (made by `selkie up`), its owner.
        project = first.get("/v1/projects").json()["projects"][0]
        pid = project["id"]
        branches = first.get(f"/v1/projects/{pid}/branches").json()["branches"]
        main = branches[0]["id"]
        tenants[0].projects[pid] = {"main": main}
        tenants[0].branches[main] = (pid, None)
        for e in first.get(f"/v1/projects/{pid}/endpoints").json()["endpoints"]:
            tenants[0].endpoints[e["id"]] = (pid, main)
        login = re.search(r"-u (\S+) -p(\S+)", log.read_text())
        assert login is not None, log.read_text()
        user, password = login.group(1), login.group(2)

        def dial() -> pymysql.Connection:  # type: ignore[type-arg]
            return connect(env, user, password, "selkiedb")

        ops = RandomOps(tenants, seed=int(os.environ.get("SELKIE_SOAK_SEED", "7")))
        stop = threading.Event()
        loader = threading.Thread(target=client_load, args=(dial, ops.out, stop))
        loader.start()
        try:
            ops.run(seconds)
        finally:
            stop.set()
            loader.join(60)
        problems = check_settled(tenants, Path(env["SELKIE_DATA_DIR"]), timeout=120)
        proc.send_signal(2)
        assert proc.wait(timeout=60) == 0
    problems += check_ledger(Path(env["SELKIE_DATA_DIR"]) / "selkie.db")
    out = ops.out
    print("calls", dict(out.calls), "statuses", dict(out.statuses))
    print("client queries", out.client_queries, "errors", dict(out.client_errors))
    print("\n".join(problems))
    assert out.server_errors == [], out.server_errors
    assert problems == [], problems
    assert sum(out.calls.values()) > 50 and out.client_queries > 100
    unexpected = {code: n for code, n in out.client_errors.items() if code not in RETRYABLE}
    assert unexpected == {}, (unexpected, out.client_messages)
