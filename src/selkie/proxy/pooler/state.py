"""What a pooled session is, apart from any backend: its database, the variables it set,
its LAST_INSERT_ID and its prepared statements — what a backend is given before the
session's next command runs there."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from selkie.mysql.client import packets, text_row
from selkie.mysql.wire import Capability
from selkie.proxy.pooler.sqlscan import Effect, classify


@dataclass
class Prepared:
    sql: bytes
    num_params: int
    # What executing it does to the session (a prepared SET's values are parameters, so it
    # pins instead of being tracked).
    effect: Effect
    param_types: bytes | None = None


@dataclass
class SessionState:
    database: str | None
    sets: dict[str, str] = field(default_factory=dict)
    last_insert_id: int | None = None
    multi_statements: bool | None = None
    prepared: dict[int, Prepared] = field(default_factory=dict)
    next_stmt_id: int = 1


# What SET NAMES sets, so an earlier SET of one of these is replaced by it, not replayed after.
_NAMES_COVERS = (
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
)


def record_sets(tracked: dict[str, str], sets: dict[str, str]) -> None:
    """Note ``sets`` in the order they ran: replay goes in insertion order, so a variable
    set again moves to the end, and SET NAMES supersedes the variables it sets."""
    for var, text in sets.items():
        tracked.pop(var, None)
        if var == "names":
            for covered in _NAMES_COVERS:
                tracked.pop(covered, None)
        tracked[var] = text


def escape(value: bytes) -> str:
    text = value.decode(errors="replace")
    return text.replace("\\", "\\\\").replace("'", "\\'")


def first_row(data: bytes, columns: int, caps: int) -> list[bytes | None] | None:
    """The values of the first row of a text-protocol result set (the raw bytes of the
    whole response), None if it is not one."""
    payloads = packets(data)
    skip = 1 + columns + (0 if caps & Capability.DEPRECATE_EOF else 1)
    if len(payloads) <= skip or not payloads[0] or payloads[0][0] in (0x00, 0xFF):
        return None
    return text_row(payloads[skip], columns)


def prepared_effect(sql: bytes) -> Effect:
    """What executing a prepared statement does: as the same text would, except that a SET
    or USE cannot be tracked (its values are parameters), so it pins."""
    effect = classify(sql.decode(errors="replace"))
    if effect.sets or effect.database:
        return dataclasses.replace(
            effect,
            pin=True,
            reason="prepared SET",
            sets={},
            database=None,
            overwrites=frozenset(),
        )
    return effect
