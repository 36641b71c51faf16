"""The proxy's access cache: hits and misses both answered from memory for the TTL (a
made-up name costs the store one look-up a second), misses kept apart from real roles."""

from __future__ import annotations

import asyncio

from selkie.controlplane import Access, AccessCache


async def test_misses_are_cached_apart_from_hits() -> None:
    cache = AccessCache(ttl=1.0)  # long enough for the spraying below on a busy machine
    fetched: list[str] = []
    real = Access(
        endpoint_id="ep-a",
        project_id="p",
        role="owner",
        password_hash="*" + "A" * 40,
        require_tls=False,
        disabled=False,
    )

    async def fetch(name: str) -> Access | None:
        fetched.append(name)
        return real if name == "owner" else None

    for _ in range(50):
        assert await cache.get("ep-a", "nobody", lambda: fetch("nobody")) is None
        assert await cache.get("ep-a", "owner", lambda: fetch("owner")) is real
    assert fetched == ["nobody", "owner"]
    for i in range(AccessCache.MAX_ENTRIES + 5):  # spraying names clears misses only
        await cache.get("ep-a", f"made-up-{i}", lambda: fetch("x"))
    fetched.clear()
    assert await cache.get("ep-a", "owner", lambda: fetch("owner")) is real
    assert fetched == []
    await asyncio.sleep(1.05)  # after the TTL a role created meanwhile is seen
    assert await cache.get("ep-a", "nobody", lambda: fetch("nobody")) is None
    assert fetched == ["nobody"]
