"""Fixtures for the safekeeper's tests: the durable platforms of tests/control/history (a
real compute whose safekeeper and archive serve the binlog)."""

from __future__ import annotations

from tests.control.history.conftest import durable, who_d

__all__ = ["durable", "who_d"]
