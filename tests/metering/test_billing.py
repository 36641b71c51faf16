"""Plans and invoices: an invoice equals the total computed by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from selkie.api.app import create_app
from selkie.config import Settings, load_settings
from selkie.control import Control
from selkie.control.bootstrap import local_principal
from selkie.errors import ConfigError
from selkie.store import Store
from selkie.store.tables import UsageEventRow, UsageHourRow

GIB = 2**30
PLANS = {
    "pro": {
        "currency": "EUR",
        "price_per_cu_hour": 0.20,
        "included_cu_hours": 10,
        "price_per_gb_month": "0.50",
        "included_gb_months": 1,
        "price_per_gb_transfer": 0.10,
        "included_gb_transfer": 2,
        "price_per_gb_written": 0.05,
        "price_per_gb_month_instant_restore": "0.25",
        "included_gb_months_instant_restore": "0.5",
    },
    "free": {},
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        environ={
            "SELKIE_DATA_DIR": str(tmp_path / "data"),
            "SELKIE_PLANS": json.dumps(PLANS),
            "SELKIE_DEFAULT_PLAN": "free",
        }
    )


@pytest.fixture
def api(store: Store, settings: Settings) -> Iterator[TestClient]:
    control = Control.open(store, settings)
    # The operator's key: plans are the operator's to set.
    _, key = control.api_keys.create(local_principal(control), name="billing", admin=True)
    with TestClient(create_app(control), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_invoice_equals_the_hand_computed_total(api: TestClient, store: Store) -> None:
    r = api.post("/v1/projects", json={"project": {"name": "billed", "settings": {"plan": "pro"}}})
    assert r.status_code == 201, r.text
    pid = r.json()["project"]["id"]
    events = [
        # 10 h at 2 CU inside October: 20 CU-hours.
        ("ep-a", "start", "2026-10-03 10:00:00", 2.0, 1),
        ("ep-a", "stop", "2026-10-03 20:00:00", 2.0, 2),
        # Crosses into October: 30 min of it at 1 CU count, 0.5 CU-hours.
        ("ep-b", "start", "2026-09-30 23:30:00", 1.0, 1),
        ("ep-b", "stop", "2026-10-01 00:30:00", 1.0, 2),
        # Crosses out of October: 1 h of it at 0.5 CU counts, 0.5 CU-hours.
        ("ep-c", "start", "2026-10-31 23:00:00", 0.5, 1),
        ("ep-c", "stop", "2026-11-01 01:00:00", 0.5, 2),
    ]
    hours = [
        # 3 GiB stored all October (744 hours), as byte-seconds: 3 GiB-months.
        ("br-a", "storage", "2026-10-05 00:00:00", 3 * GIB * 3600 * 744),
        ("br-a", "storage", "2026-09-30 23:00:00", 5 * GIB * 3600),  # September: not billed
        ("ep-a", "transfer", "2026-10-03 11:00:00", 7 * GIB),
        ("ep-a", "transfer", "2026-10-31 23:00:00", GIB // 2),
        ("ep-a", "transfer", "2026-11-01 00:00:00", 9 * GIB),  # November: not billed
        ("ep-a", "written", "2026-10-03 12:00:00", GIB + 100 * 2**20),
        # 2 GiB of restore history all October: 2 GiB-months.
        (pid, "history", "2026-10-07 00:00:00", 2 * GIB * 3600 * 744),
    ]
    with store.write() as s:
        for ep, kind, when, cu, gen in events:
            s.add(
                UsageEventRow(
                    endpoint_id=ep, project_id=pid, kind=kind, at=at(when), cu=cu, generation=gen
                )
            )
        for subject, metric, hour, value in hours:
            s.add(
                UsageHourRow(
                    project_id=pid, subject_id=subject, metric=metric, hour=at(hour), value=value
                )
            )

    body = api.get(f"/v1/projects/{pid}/invoices/2026-10").json()["invoice"]
    # By hand:
    #   compute  21 CU-h, 10 included -> 11 x 0.20      = 2.20
    #   storage  3 GB-month, 1 incl.  ->  2 x 0.50      = 1.00
    #   transfer 7.5 GB, 2 included   -> 5.5 x 0.10     = 0.55
    #   written  1.09765625 GB        -> 1.097656 x 0.05 = 0.0548828 -> 0.05
    #   history  2 GB-month, 0.5 incl. -> 1.5 x 0.25     = 0.375 -> 0.38 (half up)
    assert body["plan"] == "pro" and body["currency"] == "EUR" and body["status"] == "final"
    assert (body["period_start"], body["period_end"]) == (
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
    )
    lines = {x["item"]: x for x in body["line_items"]}
    assert {k: Decimal(v["quantity"]) for k, v in lines.items()} == {
        "compute": Decimal("21"),
        "storage": Decimal("3"),
        "data_transfer": Decimal("7.5"),
        "written_data": Decimal("1.097656"),
        "instant_restore": Decimal("2"),
    }
    assert {k: Decimal(v["amount"]) for k, v in lines.items()} == {
        "compute": Decimal("2.20"),
        "storage": Decimal("1.00"),
        "data_transfer": Decimal("0.55"),
        "written_data": Decimal("0.05"),
        "instant_restore": Decimal("0.38"),
    }
    assert Decimal(body["total"]) == Decimal("4.18")
    # The same figures from the consumption history, and asking again changes nothing.
    history = api.get(
        "/v1/consumption_history/projects",
        params={
            "from": "2026-10-01T00:00:00Z",
            "to": "2026-11-01T00:00:00Z",
            "granularity": "monthly",
        },
    ).json()
    (period,) = history["projects"][0]["consumption"]
    assert period["compute_time_seconds"] == 21 * 3600
    assert period["data_transfer_bytes"] == 7 * GIB + GIB // 2
    assert period["written_data_bytes"] == GIB + 100 * 2**20
    assert period["data_storage_bytes_hour"] == 3 * GIB * 744
    assert api.get(f"/v1/projects/{pid}/invoices/2026-10").json()["invoice"] == body

    # November is still open at the time of this session? Either way its invoice has the
    # 0.5 CU-hours of ep-c and the 9 GiB.
    nov = api.get(f"/v1/projects/{pid}/invoices/2026-11").json()["invoice"]
    nov_lines = {x["item"]: x for x in nov["line_items"]}
    assert Decimal(nov_lines["compute"]["quantity"]) == Decimal("0.5")
    assert Decimal(nov_lines["data_transfer"]["amount"]) == Decimal("0.70")  # (9-2) x 0.10


def test_csv_export(api: TestClient, store: Store) -> None:
    pid = api.post("/v1/projects", json={"project": {"name": "csv"}}).json()["project"]["id"]
    with store.write() as s:
        s.add(
            UsageEventRow(
                endpoint_id="e",
                project_id=pid,
                kind="start",
                at=at("2026-10-01 00:00:00"),
                cu=0.25,
                generation=1,
            )
        )
        s.add(
            UsageEventRow(
                endpoint_id="e",
                project_id=pid,
                kind="stop",
                at=at("2026-10-01 01:30:00"),
                cu=0.25,
                generation=2,
            )
        )
        s.add(
            UsageHourRow(
                project_id=pid,
                subject_id="e",
                metric="transfer",
                hour=at("2026-10-01 01:00:00"),
                value=1234,
            )
        )
    r = api.get(
        "/v1/consumption_history/projects",
        params={
            "from": "2026-10-01T00:00:00Z",
            "to": "2026-10-01T03:00:00Z",
            "granularity": "hourly",
            "project_ids": pid,
            "format": "csv",
        },
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0] == (
        "project_id,timeframe_start,timeframe_end,active_time_seconds,compute_time_seconds,"
        "written_data_bytes,data_transfer_bytes,data_storage_bytes_hour,instant_restore_bytes_hour"
    )
    assert lines[1:] == [
        f"{pid},2026-10-01T00:00:00+00:00,2026-10-01T01:00:00+00:00,3600.0,900.0,0,0,0.0,0.0",
        f"{pid},2026-10-01T01:00:00+00:00,2026-10-01T02:00:00+00:00,1800.0,450.0,0,1234,0.0,0.0",
        f"{pid},2026-10-01T02:00:00+00:00,2026-10-01T03:00:00+00:00,0.0,0.0,0,0,0.0,0.0",
    ]


def test_plans_and_periods_are_validated(api: TestClient, tmp_path: Path) -> None:
    r = api.post("/v1/projects", json={"project": {"settings": {"plan": "gold"}}})
    assert r.status_code == 422 and "plan 'gold' is not configured" in r.json()["message"]
    pid = api.post("/v1/projects", json={"project": {}}).json()["project"]["id"]
    for period, status in (("2026-13", 422), ("26-10", 422), ("2999-01", 422), ("2026-10", 200)):
        r = api.get(f"/v1/projects/{pid}/invoices/{period}")
        assert r.status_code == status, (period, r.text)
    assert r.json()["invoice"]["plan"] == "free"  # the configured default
    assert r.json()["invoice"]["total"] == "0.00"
    r = api.patch(f"/v1/projects/{pid}", json={"project": {"settings": {"plan": "pro"}}})
    assert r.status_code == 200 and r.json()["project"]["settings"]["plan"] == "pro"
    for bad in (
        {"SELKIE_PLANS": "{not json"},
        {"SELKIE_PLANS": json.dumps({"x": {"price_per_cu_hour": -1}})},
        {"SELKIE_PLANS": json.dumps({"x": {"price_per_cu_hur": 1}})},
        {"SELKIE_PLANS": json.dumps({"x": {}}), "SELKIE_DEFAULT_PLAN": "y"},
    ):
        with pytest.raises(ConfigError):
            load_settings(environ={"SELKIE_DATA_DIR": str(tmp_path), **bad})
    toml = tmp_path / "selkie.toml"
    toml.write_text(
        'default_plan = "team"\n[plans.team]\nprice_per_cu_hour = 0.3\ncurrency = "GBP"\n'
    )
    team = load_settings(config_file=toml, environ={}).plans["team"]
    assert (team.price_per_cu_hour, team.currency) == (Decimal("0.3"), "GBP")
