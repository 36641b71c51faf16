"""Framing: payloads of 16 MiB and more split into packets as the protocol says."""

from __future__ import annotations

from selkie.mysql.stream import frame
from selkie.mysql.wire import MAX_PAYLOAD


def test_framing_splits_at_16_mib() -> None:
    payload = b"x" * (MAX_PAYLOAD + 10)
    data, nxt = frame(3, payload)
    assert data[:4] == b"\xff\xff\xff\x03" and nxt == 5
    assert data[4 + MAX_PAYLOAD : 8 + MAX_PAYLOAD] == b"\x0a\x00\x00\x04"
    exact, nxt = frame(0, b"y" * MAX_PAYLOAD)
    assert exact[-4:] == b"\x00\x00\x00\x01" and nxt == 2  # an empty packet ends it
