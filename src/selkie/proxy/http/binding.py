"""Parameters bound by the proxy for ``POST /sql``: each ``?`` outside strings, quoted names
and comments becomes the literal of its value. Strings go in as hex literals of their UTF-8
bytes (``_utf8mb4 X'…'``), so no quoting or escaping mode of the server can change their
meaning; numbers as numbers; ``null`` as NULL; lists and objects as JSON text."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from selkie.proxy.pooler.sqlscan import STRINGS_OR_COMMENTS

_TOKENS = re.compile(STRINGS_OR_COMMENTS.pattern + r"|\?", re.S)


class BindError(ValueError):
    pass


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BindError("parameters must be finite numbers")
        return repr(value)
    if isinstance(value, list | dict):
        value = json.dumps(value)
    if isinstance(value, str):
        return f"_utf8mb4 X'{value.encode().hex()}'" if value else "''"
    raise BindError(f"cannot bind a parameter of type {type(value).__name__}")


def bind(sql: str, params: list[Any]) -> str:
    """``sql`` with its ``?`` placeholders replaced by ``params``, in order."""
    pending = iter(params)
    used = 0

    def swap(match: re.Match[str]) -> str:
        nonlocal used
        if match.group(0) != "?":
            return match.group(0)
        try:
            value = next(pending)
        except StopIteration:
            raise BindError(f"more placeholders than the {len(params)} parameters") from None
        used += 1
        return literal(value)

    bound = _TOKENS.sub(swap, sql)
    if used != len(params):
        raise BindError(f"{len(params)} parameters for {used} placeholders")
    return bound
