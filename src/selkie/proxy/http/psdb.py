"""The shapes of PlanetScale's database-js protocol (``psdb.v1alpha1.Database``): field types
by the names the driver parses (Vitess's: ``INT64``, ``UINT32``, ``DECIMAL``, ``DATETIME``,
``VARBINARY``, …), rows as the values' bytes concatenated in base64 with each one's length
(``-1`` for NULL), counts as strings."""

from __future__ import annotations

import base64
from typing import Any

from selkie.proxy.http.resultset import Column, Outcome

BINARY_CHARSET = 63
UNSIGNED_FLAG = 0x20
ENUM_FLAG = 0x100
SET_FLAG = 0x800

_INTS = {0x01: "INT8", 0x02: "INT16", 0x09: "INT24", 0x03: "INT32", 0x08: "INT64"}
_FIXED = {
    0x04: "FLOAT32",
    0x05: "FLOAT64",
    0x00: "DECIMAL",
    0xF6: "DECIMAL",
    0x0A: "DATE",
    0x0B: "TIME",
    0x0C: "DATETIME",
    0x07: "TIMESTAMP",
    0x0D: "YEAR",
    0x10: "BIT",
    0x06: "NULL_TYPE",
    0xFF: "GEOMETRY",
    0xF5: "JSON",
}
_BLOBS = {0xF9, 0xFA, 0xFB, 0xFC}
_VARCHARS = {0x0F, 0xFD}


def type_name(col: Column) -> str:
    if col.type in _INTS:
        name = _INTS[col.type]
        return "U" + name if col.flags & UNSIGNED_FLAG else name
    if col.type in _FIXED:
        return _FIXED[col.type]
    binary = col.charset == BINARY_CHARSET
    if col.type in _BLOBS:
        return "BLOB" if binary else "TEXT"
    if col.type in _VARCHARS:
        return "VARBINARY" if binary else "VARCHAR"
    if col.type == 0xFE:
        if col.flags & ENUM_FLAG:
            return "ENUM"
        if col.flags & SET_FLAG:
            return "SET"
        return "BINARY" if binary else "CHAR"
    return "VARBINARY"


def field(col: Column) -> dict[str, Any]:
    return {
        "name": col.name,
        "type": type_name(col),
        "table": col.table,
        "orgTable": col.org_table,
        "database": col.database,
        "orgName": col.org_name,
        "columnLength": col.length,
        "charset": col.charset,
        "flags": col.flags,
    }


def row(values: list[bytes | None]) -> dict[str, Any]:
    return {
        "lengths": [str(-1 if v is None else len(v)) for v in values],
        "values": base64.b64encode(b"".join(v for v in values if v is not None)).decode(),
    }


def result(outcome: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rowsAffected": str(outcome.affected),
        "insertId": str(outcome.insert_id),
    }
    if outcome.columns:
        out["fields"] = [field(c) for c in outcome.columns]
        out["rows"] = [row(r) for r in outcome.rows]
    return out


def error(code: int | str, message: str, sqlstate: str = "") -> dict[str, Any]:
    """An error as the driver reads it (``{message, code}``), with MariaDB's number and
    SQLSTATE in the message as Vitess writes them."""
    text = f"{message} (errno {code}) (sqlstate {sqlstate})" if sqlstate else message
    return {"message": text, "code": str(code)}
