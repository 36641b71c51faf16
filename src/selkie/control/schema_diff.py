"""Compare two branches' schemas, Neon's ``compare_schema``: every table, view, routine and
trigger of a database as ``SHOW CREATE`` prints it, in a stable order, and a unified diff of
the two. The branches' endpoints are woken to be asked (a schema lives in the server)."""

from __future__ import annotations

import difflib
import re

from selkie.compute.base import ComputeDriver
from selkie.compute.mariadb import quote_db

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
