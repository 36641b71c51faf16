"""Prometheus metrics from a running platform, read back with prometheus_client's parser."""

from __future__ import annotations

import asyncio

import pymysql
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from selkie.api.app import create_app
from selkie.control.bootstrap import local_principal
from tests.proxy.conftest import Db
from tests.proxy.test_clients import pymysql_conn


async def test_metrics_parse_and_count_what_happened(db: Db) -> None:
    p = db.platform

    def traffic() -> None:
        c = pymysql_conn(db, ssl_disabled=True)
        with c.cursor() as cur:
            cur.execute("SELECT REPEAT('x', 5000)")
            cur.fetchall()
        c.close()
        with pytest.raises(pymysql.err.OperationalError):
            pymysql_conn(db, password="wrong", ssl_disabled=True)

    await asyncio.to_thread(traffic)
    await p.lifecycle.suspend(db.endpoint_id)
    who = local_principal(p.control)
    _, admin_key = await asyncio.to_thread(p.control.api_keys.create, who, name="prom", admin=True)
    _, plain_key = await asyncio.to_thread(p.control.api_keys.create, who, name="plain")
    api = TestClient(create_app(p.control, runtime=p))
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers={"Authorization": f"Bearer {plain_key}"}).status_code == 403
    project = (("project_id", db.created.project.id),)
    transfer = ("selkie_usage_data_transfer_bytes_total", project)
    for _ in range(50):  # the proxy's next activity report stores the bytes sent
        r = api.get("/metrics", headers={"Authorization": f"Bearer {admin_key}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        if transfer in samples:
            break
        await asyncio.sleep(0.1)
    ep = (("endpoint_id", db.endpoint_id),)
    assert samples[("selkie_endpoints", (("state", "suspended"),))] == 1
    assert samples[("selkie_compute_starts_total", ep)] == 1
    assert samples[("selkie_compute_suspends_total", ep)] == 1
    assert samples[("selkie_compute_start_seconds_count", ())] == 1
    assert 0 < samples[("selkie_compute_start_seconds_sum", ())] < 30
    assert samples[("selkie_proxy_bytes_total", (("direction", "to_client"), *ep))] > 5000
    assert samples[("selkie_proxy_statements_total", ep)] >= 1
    assert samples[("selkie_proxy_sessions", ep)] == 0
    assert samples[("selkie_proxy_auth_failures_total", ())] == 1
    to_client = samples[("selkie_proxy_bytes_total", (("direction", "to_client"), *ep))]
    assert samples[transfer] == to_client  # billed as relayed
    assert samples[("selkie_usage_written_data_bytes_total", project)] > 0  # read at suspend
    assert samples[("selkie_proxy_logins_total", (("outcome", "ok:mysql_native_password"),))] == 1
