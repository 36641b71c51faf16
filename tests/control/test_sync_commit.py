"""What a compute's semi-sync status rows mean for its commits (sans server)."""

from __future__ import annotations

import pytest

from selkie.control.durability import SemiSync, enable_statements
from selkie.errors import ComputeError


def rows(enabled: str, status: str, clients: str) -> list[list[tuple[str, str]]]:
    return [
        [("rpl_semi_sync_master_enabled", enabled)],
        [("Rpl_semi_sync_master_clients", clients), ("Rpl_semi_sync_master_status", status)],
    ]


@pytest.mark.parametrize(
    ("enabled", "status", "clients", "meaning"),
    [
        ("OFF", "OFF", "0", "off"),
        # A semi-sync replica may be connected while the server does not wait for it.
        ("OFF", "OFF", "1", "off"),
        ("ON", "ON", "1", "on"),
        # The timeout made commits asynchronous.
        ("ON", "OFF", "1", "fallen_back"),
        ("ON", "OFF", "0", "fallen_back"),
        # No replica to wait for: the next commit waits out the timeout, then falls back.
        ("ON", "ON", "0", "fallen_back"),
    ],
)
def test_sync_commit(enabled: str, status: str, clients: str, meaning: str) -> None:
    assert SemiSync.parse(rows(enabled, status, clients)).sync_commit == meaning


def test_unexpected_rows_are_a_compute_error() -> None:
    with pytest.raises(ComputeError):
        SemiSync.parse([[("rpl_semi_sync_master_enabled", "ON")]])
    with pytest.raises(ComputeError):
        SemiSync.parse(rows("ON", "ON", "many"))


def test_enabling_sets_the_wait_point_and_timeout_first() -> None:
    assert enable_statements(800) == (
        "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'",
        "SET GLOBAL rpl_semi_sync_master_timeout = 800",
        "SET GLOBAL rpl_semi_sync_master_enabled = ON",
    )
