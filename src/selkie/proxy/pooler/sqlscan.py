"""What a statement does to its session, for transaction pooling (ProxySQL's multiplexing
rules are the reference). A pure function of the SQL text: no parsing beyond what the
decision needs, and when in doubt the answer is "pin" (keep the backend), never "share".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Session variables whose value is tracked and replayed on whichever backend runs the next
# statement. Anything else a client SETs pins its session.
KNOWN_VARIABLES = frozenset(
    {
        "autocommit",
        "sql_mode",
        "time_zone",
        "transaction_isolation",
        "tx_isolation",
        "transaction_read_only",
        "tx_read_only",
        "character_set_client",
        "character_set_connection",
        "character_set_results",
        "character_set_database",
        "collation_connection",
        "names",
        "character set",
        "charset",
        "sql_select_limit",
        "max_statement_time",
        "max_execution_time",
        "group_concat_max_len",
        "foreign_key_checks",
        "unique_checks",
        "sql_safe_updates",
        "sql_auto_is_null",
        "innodb_lock_wait_timeout",
        "lock_wait_timeout",
        "wait_timeout",
        "interactive_timeout",
        "net_read_timeout",
        "net_write_timeout",
        "session_track_schema",
        "session_track_system_variables",
        "session_track_state_change",
        "session_track_transaction_info",
        "div_precision_increment",
        "default_storage_engine",
        "big_tables",
        "optimizer_switch",
        "sql_notes",
        "sql_warnings",
        "sql_quote_show_create",
        "timestamp",
        "session transaction isolation level",
        "session transaction",
    }
)

# Tracked names that are not server variables (forms of SET NAMES / SET SESSION TRANSACTION).
PSEUDO = frozenset(
    {
        "names",
        "character set",
        "charset",
        "session transaction",
        "session transaction isolation level",
    }
)

# Tracked variables a new connection takes from the server's globals, so ``SET SESSION
# var = DEFAULT`` gives back what a fresh session has. Not: the character set ones (from the
# handshake), wait_timeout (interactive_timeout for interactive clients), the transaction
# characteristics (names differ across versions), and the pseudo-variables.
DEFAULTABLE = (
    KNOWN_VARIABLES
    - PSEUDO
    - {
        "character_set_client",
        "character_set_connection",
        "character_set_results",
        "character_set_database",
        "collation_connection",
        "wait_timeout",
        "transaction_isolation",
        "tx_isolation",
        "transaction_read_only",
        "tx_read_only",
    }
)

# Quoted strings and identifiers, as "unrolled loops" (no alternation per character); an
# unterminated one runs to the end of the text, so no input makes the scan quadratic.
_STRINGS = re.compile(
    r"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*(?:'|\\?\Z)"
    r"|\"[^\"\\]*(?:(?:\\.|\"\")[^\"\\]*)*(?:\"|\\?\Z)"
    r"|`[^`]*(?:`|\Z)",
    re.S,
)
# Strings first, so comment markers inside a literal are left alone.
_STRINGS_OR_COMMENTS = re.compile(_STRINGS.pattern + r"|/\*.*?(?:\*/|\Z)|(?:--\s|#)[^\n]*", re.S)
STRINGS_OR_COMMENTS = _STRINGS_OR_COMMENTS
# /*!NNNNN … */ and /*M!NNNNN … */: the server runs what is inside.
_EXECUTABLE = re.compile(r"/\*M?!\d*(.*?)(?:\*/|\Z)", re.S)
_USER_VAR = re.compile(r"(?<![@\w])@(?!@)[\w.$]+|(?<![@\w])@['\"`]")
_TEMPORARY = re.compile(r"\bcreate\s+(?:or\s+replace\s+)?temporary\s+(?:table|sequence)\b")
_SETS_LAST_INSERT_ID = re.compile(r"\blast_insert_id\s*\(\s*[^\s)]")
_LOCK_FUNCTIONS = re.compile(r"\b(?:get_lock|is_used_lock|release_lock|release_all_locks)\s*\(")
_FOUND_ROWS = re.compile(r"\bfound_rows\s*\(")
_SET = re.compile(r"^\s*set\s+(.*)$", re.I | re.S)
_USE = re.compile(r"^\s*use\s+`?([\w$]+)`?\s*;?\s*$", re.I)
_VARNAME = re.compile(
    r"^\s*(?:@@(?:session\.|local\.)?|session\s+|local\s+)?([a-z_][\w]*)\s*(?::=|=)", re.I
)


@dataclass(frozen=True)
class Effect:
    """What running this statement means for the session."""

    # Keep the backend for the rest of the session (until unpin).
    pin: bool = False
    # Why, for metrics and tests.
    reason: str = ""
    # Release a LOCK TABLES pin.
    unpin_lock_tables: bool = False
    lock_tables: bool = False
    # SET assignments of known variables: name -> assignment text to replay.
    sets: dict[str, str] = field(default_factory=dict)
    # USE db.
    database: str | None = None
    # The statement reads LAST_INSERT_ID(): the tracked value must be in place first.
    reads_last_insert_id: bool = False
    # It may change session state that is not tracked (CALL: a stored procedure can SET
    # anything): the backend is reset before another client gets it.
    untracked: bool = False
    # Variables the statement (a lone SET) gives a value that does not depend on their
    # current one: another client's value there may stand until it runs, no reset needed.
    overwrites: frozenset[str] = frozenset()


def _keep_strings(m: re.Match[str]) -> str:
    text = m.group()
    if text[0] in "'\"`":
        return text
    executable = _EXECUTABLE.fullmatch(text)
    return f" {executable.group(1)} " if executable else " "


def _uncomment(sql: str) -> str:
    """Comments outside literals replaced by a space."""
    if "/*" not in sql and "--" not in sql and "#" not in sql:
        return sql
    return _STRINGS_OR_COMMENTS.sub(_keep_strings, sql)


def _strip(sql: str) -> str:
    """Comments removed and string literals blanked (so keywords in data do not count)."""
    return _STRINGS.sub("''", _uncomment(sql))


# What split_top_level looks at: whole quoted strings (an unterminated one runs to the end),
# parentheses and the separator. Matched by the regex engine, so a statement of megabytes
# costs one pass in C and a Python step per token, not per character.
_SPLIT_TOKENS = {
    sep: re.compile(_STRINGS.pattern + r"|[()" + re.escape(sep) + "]", re.S) for sep in ",;"
}


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` (``,`` or ``;``) outside quotes and parentheses."""
    parts, depth, start = [], 0, 0
    for m in _SPLIT_TOKENS[sep].finditer(text):
        lexeme = m.group()
        if lexeme == "(":
            depth += 1
        elif lexeme == ")":
            depth -= 1
        elif lexeme == sep and depth == 0:
            parts.append(text[start : m.start()])
            start = m.end()
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _set_effect(body_raw: str) -> Effect:
    """``SET …`` (the text after SET): tracked if every assignment is of a known variable."""
    lowered = body_raw.strip().lower()
    for prefix in ("names", "character set", "charset"):
        if lowered.startswith(prefix + " ") or lowered == prefix:
            # SET NAMES x [COLLATE y][, other assignments]
            first, *rest = split_top_level(body_raw)
            names = Effect(sets={"names": first}, overwrites=frozenset({"names"}))
            if not rest:
                return names
            others = _set_effect(", ".join(rest))
            if others.pin:
                return others
            return Effect(
                sets={**names.sets, **others.sets}, overwrites=names.overwrites | others.overwrites
            )
    if lowered.startswith("transaction"):
        # Applies to the next transaction only: harmless to run on the backend that runs it,
        # but that is not known here, so the session is pinned.
        return Effect(pin=True, reason="SET TRANSACTION")
    if lowered.startswith(("session transaction", "local transaction")):
        return Effect(sets={"session transaction": body_raw.strip()})
    sets: dict[str, str] = {}
    overwrites = set()
    for assignment in split_top_level(body_raw):
        if _USER_VAR.search(_strip(assignment)):
            # @x = …, or a value from a user variable that another backend does not have.
            return Effect(pin=True, reason="user variable")
        m = _VARNAME.match(assignment)
        if not m or m.group(1).lower() not in KNOWN_VARIABLES:
            return Effect(pin=True, reason="unknown SET")
        if assignment.lstrip().lower().startswith("global") or "@@global." in assignment.lower():
            return Effect(pin=True, reason="unknown SET")
        var = m.group(1).lower()
        sets[var] = assignment
        if "@@" not in _strip(assignment[m.end() :]):  # not CONCAT(@@sql_mode, …)
            overwrites.add(var)
    return Effect(sets=sets, overwrites=frozenset(overwrites))


def classify(sql: str) -> Effect:
    """The session effect of one COM_QUERY text (possibly several statements)."""
    uncommented = _uncomment(sql)
    stripped = _STRINGS.sub("''", uncommented)
    low = stripped.lower()
    # Literals are blanked in ``stripped``: a ';' left there may separate statements (the
    # split below also knows an unterminated literal, which runs to the end).
    parts = split_top_level(uncommented, ";") if ";" in stripped.rstrip().rstrip(";") else []
    if len(parts) > 1:
        # Several statements in one packet: any pinning trigger anywhere pins.
        effects = [classify(s) for s in parts]
        pins = [e for e in effects if e.pin]
        if pins:
            return Effect(pin=True, reason=pins[0].reason)
        merged: dict[str, str] = {}
        db = None
        for e in effects:
            merged.update(e.sets)
            db = e.database or db
        return Effect(
            sets=merged,
            database=db,
            reads_last_insert_id=any(e.reads_last_insert_id for e in effects),
            lock_tables=any(e.lock_tables for e in effects),
            unpin_lock_tables=any(e.unpin_lock_tables for e in effects),
            untracked=any(e.untracked for e in effects),
        )
    # LAST_INSERT_ID(), @@identity, @@last_insert_id
    reads_lii = "last_insert_id" in low or "identity" in low
    if re.match(r"^\s*set\b", low):
        m = _SET.match(uncommented)
        body = m.group(1) if m else ""
        return _set_effect(body.rstrip().rstrip(";"))
    m = _USE.match(uncommented)
    if m:
        return Effect(database=m.group(1))
    if re.match(r"^\s*lock\s+tables?\b", low):
        return Effect(pin=True, reason="LOCK TABLES", lock_tables=True)
    if re.match(r"^\s*unlock\s+tables?\b", low):
        return Effect(unpin_lock_tables=True)
    # Each search only where a plain substring test says it can match: statements of
    # megabytes (multi-row inserts) are common, and these run on the event loop.
    if "@" in stripped and _USER_VAR.search(stripped):
        return Effect(pin=True, reason="user variable")
    if "temporary" in low and _TEMPORARY.search(low):
        return Effect(pin=True, reason="temporary table")
    if re.match(r"^\s*(?:prepare|execute|deallocate)\s", low):
        return Effect(pin=True, reason="PREPARE")
    if "lock" in low and _LOCK_FUNCTIONS.search(low):
        return Effect(pin=True, reason="GET_LOCK")
    if "found_rows" in low and ("sql_calc_found_rows" in low or _FOUND_ROWS.search(low)):
        return Effect(pin=True, reason="SQL_CALC_FOUND_ROWS")
    if "last_insert_id" in low and _SETS_LAST_INSERT_ID.search(low):
        # LAST_INSERT_ID(expr) sets the value no OK packet reports.
        return Effect(pin=True, reason="LAST_INSERT_ID(expr)")
    # Savepoints live inside a transaction, which holds its backend anyway (IN_TRANS).
    if re.match(r"^\s*(?:xa|handler)\b", low):
        return Effect(pin=True, reason="XA/HANDLER")
    if re.match(r"^\s*call\b", low):
        # A procedure can read LAST_INSERT_ID() and change anything.
        return Effect(reads_last_insert_id=True, untracked=True)
    return Effect(reads_last_insert_id=reads_lii)
