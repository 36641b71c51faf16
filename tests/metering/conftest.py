"""Metering tests run on the same in-process platform as the compute tests."""

from tests.compute.conftest import platform, who

__all__ = ["platform", "who"]
