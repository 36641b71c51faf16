"""SQL over HTTP stops reading a result at its cap (10 MiB) as the bytes arrive: a row of
200 MiB is refused from its packet header, never held in the proxy's memory, and the
backend that was sending it is closed, not handed to the next request (security review,
issue 26 item 2)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from selkie.control.bootstrap import local_principal
from tests.proxy.conftest import Db
from tests.proxy.pooler.test_pool import pooled_db, pooled_platform
from tests.proxy.test_http_sql import EXECUTE, client

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


def memory(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


async def test_a_huge_row_is_refused_without_being_read(db: Db) -> None:
    async with client(db) as c:
        assert (await c.post("/sql", json={"query": "SELECT 1"})).status_code == 200
        before = memory("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
        r = await c.post("/sql", json={"query": "SELECT REPEAT('x', 200 * 1024 * 1024) AS big"})
        peak = memory("VmHWM")
        assert r.status_code == 413, r.text[:300]
        assert "larger than" in r.text
        # The proxy runs in this process: it never held the row.
        assert peak - before < 64 * MIB, f"grew by {(peak - before) / MIB:.0f} MiB"
        # The next request gets a clean backend (the cut-off one was closed).
        again = await c.post("/sql", json={"query": "SELECT 2 AS two"})
        assert again.status_code == 200 and again.json()["rows"] == [{"two": 2}]


async def test_three_results_are_answered_at_once(db: Db) -> None:
    """Only the first result is answered; the others are read and dropped, however many
    (three or more waited out the statement timeout, holding the backend)."""
    async with client(db) as c:
        for query in (
            "SELECT 1 AS a; SELECT 2; SELECT 3",
            "SELECT 1 AS a; SELECT 2; SELECT 3; DO 4",
        ):
            r = await asyncio.wait_for(c.post("/sql", json={"query": query}), 20)
            assert r.status_code == 200, r.text
            assert r.json()["rows"] == [{"a": 1}]
        again = await c.post("/sql", json={"query": "SELECT 2 AS two"})
        assert again.json()["rows"] == [{"two": 2}]


async def test_a_database_changed_inside_a_request_does_not_reach_the_next(
    tmp_path: Path, template_datadir: Path
) -> None:
    """`SELECT 1; USE zother` moves the backend's session to another database; the next
    request on that backend must still start in its own (security review, issue 26 item
    10: it ran in `zother`)."""
    p = await pooled_platform(tmp_path, template_datadir, cap=1)
    try:
        db = await pooled_db(p)
        who = local_principal(p.control)
        await asyncio.to_thread(
            p.control.databases.create,
            who,
            db.created.project.id,
            db.created.branch.id,
            name="zother",
            owner_name=db.role,
        )
        await p.runner.wait_idle()
        async with client(db) as c:
            for query in ("SELECT 1 AS a; USE zother", "USE zother"):
                moved = await c.post("/sql", json={"query": query})
                assert moved.status_code == 200, moved.text
                r = await c.post("/sql", json={"query": "SELECT DATABASE() AS d"})
                assert r.json()["rows"] == [{"d": db.database}], (query, r.text)
            # database-js: its own USE is tracked (the session says so), a hidden one not.
            r = await c.post(EXECUTE, json={"query": "SELECT 1; USE zother", "session": None})
            assert r.status_code == 200, r.text
            r = await c.post(EXECUTE, json={"query": "SELECT DATABASE() AS d", "session": None})
            (row,) = r.json()["result"]["rows"]
            assert base64.b64decode(row["values"]).decode() == db.database, r.text
    finally:
        await p.stop()
        p.close()
