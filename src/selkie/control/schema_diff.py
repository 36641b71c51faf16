"""Compare two branches' schemas, Neon's ``compare_schema``: every table, view, routine and
trigger of a database as ``SHOW CREATE`` prints it, in a stable order, and a unified diff of
the two. The branches' endpoints are woken to be asked (a schema lives in the server)."""

from __future__ import annotations

import asyncio
import difflib
import re

from selkie.compute.base import ComputeDriver
from selkie.compute.mariadb import quote_db
from selkie.control.lifecycle import Lifecycle
from selkie.errors import Conflict
from selkie.store import Store
from selkie.store.endpoints import endpoint_ids_of_branch

# Table options that change with the data, not the schema.
_VOLATILE = re.compile(r" AUTO_INCREMENT=\d+")


def _literal(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "''") + "'"


async def schema_text(driver: ComputeDriver, endpoint_id: str, database: str) -> list[str]:
    """The database's schema as lines (empty when the database does not exist there)."""
    db = quote_db(database)
    objects, routines, triggers = await driver.execute(
        endpoint_id,
        [
            "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA = {_literal(database)} ORDER BY TABLE_NAME",
            "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES "
            f"WHERE ROUTINE_SCHEMA = {_literal(database)} ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
            f"WHERE TRIGGER_SCHEMA = {_literal(database)} ORDER BY TRIGGER_NAME",
        ],
    )
    statements: list[str] = []
    for name, kind in objects:
        what = "VIEW" if kind == "VIEW" else "TABLE"
        statements.append(f"SHOW CREATE {what} {db}.`{str(name).replace('`', '``')}`")
    for name, kind in routines:
        statements.append(f"SHOW CREATE {kind} {db}.`{str(name).replace('`', '``')}`")
    for (name,) in triggers:
        statements.append(f"SHOW CREATE TRIGGER {db}.`{str(name).replace('`', '``')}`")
    if not statements:
        return []
    lines: list[str] = []
    for rows in await driver.execute(endpoint_id, statements):
        for row in rows:
            # The object's name, then its CREATE statement (column 2, or 3 for routines and
            # triggers, whose second column is the sql_mode).
            create = next(
                str(v) for v in row[1:] if isinstance(v, str) and v.upper().startswith("CREATE")
            )
            lines += (_VOLATILE.sub("", create) + ";").splitlines()
            lines.append("")
    return lines


def unified(base: list[str], branch: list[str], *, base_name: str, branch_name: str) -> str:
    return "".join(
        line if line.endswith("\n") else line + "\n"
        for line in difflib.unified_diff(base, branch, base_name, branch_name, lineterm="")
    )


class SchemaDiff:
    """Compares branches' schemas on their computes (the first endpoint of each, woken)."""

    def __init__(self, *, store: Store, lifecycle: Lifecycle, driver: ComputeDriver) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.driver = driver

    async def compare(self, base_branch_id: str, branch_id: str, database: str) -> str:
        """The unified diff of a database's schema on two branches (their endpoints woken)."""
        texts = []
        for bid in (base_branch_id, branch_id):
            endpoint_ids = await asyncio.to_thread(endpoint_ids_of_branch, self.store, bid)
            if not endpoint_ids:
                raise Conflict(f"branch {bid} has no endpoint to read its schema from")
            await self.lifecycle.start(endpoint_ids[0], wake=True)
            texts.append(await schema_text(self.driver, endpoint_ids[0], database))
        return unified(texts[0], texts[1], base_name=base_branch_id, branch_name=branch_id)
