"""What the binlog server answers to the statements a replica sends before it asks for the
binlog, as a MariaDB primary would. Pure: a statement and the session in, a reply out.

A MariaDB 10.11 replica's IO thread sends (``slave.cc``)::

    SELECT UNIX_TIMESTAMP()
    SHOW VARIABLES LIKE 'SERVER_ID'
    SET @master_heartbeat_period= 30000000000
    SET @master_binlog_checksum= @@global.binlog_checksum
    SELECT @master_binlog_checksum
    SET @mariadb_slave_capability= 4
    SELECT @@GLOBAL.gtid_domain_id
    SET @slave_connect_state='0-1-42'
    SET @slave_gtid_strict_mode=0
    SET @slave_gtid_ignore_duplicates=0
    SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'

and ``mariadb-binlog --read-from-remote-server`` a few of the same. The grammar understood is
what those need and a little more: ``SET`` of user variables (literals, ``@@`` system
variables, functions) and of session settings (accepted, ignored), ``SELECT`` of literals,
variables and a few functions, ``SHOW [GLOBAL|SESSION] VARIABLES [LIKE|WHERE]``. User
variables are the replica's parameters of the dump (its position, checksums, heartbeats).
Anything else gets an error, never a disconnect.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from selkie.mysql.wire import ErrorCode

Value = str | int | None


@dataclass
class Session:
    """One connection's state: who it is, its user variables, the server's variables."""

    user: str
    host: str
    connection_id: int
    system: Mapping[str, Value]
    user_vars: dict[str, Value] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    def user_var(self, name: str) -> Value:
        return self.user_vars.get(name.lower())


@dataclass(frozen=True)
class Done:
    """OK: the statement ran and returns no rows."""


@dataclass(frozen=True)
class Rows:
    columns: list[str]
    rows: list[list[Value]]


@dataclass(frozen=True)
class Refused:
    code: ErrorCode
    message: str


Reply = Done | Rows | Refused


class _SyntaxError(Exception):
    """The statement does not parse (near the token at ``pos``)."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


class _Unknown(Exception):
    """A statement or function this server does not run."""


class _UnknownVariable(Exception):
    pass


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|/\*(?![!M]).*?\*/|(?:--\s|\#)[^\n]*)
    |(?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
    |(?P<sysvar>@@(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*)
    |(?P<uservar>@(?:[A-Za-z0-9_$.]+|`[^`]*`|'[^']*'))
    |(?P<number>\d+(?:\.\d+)?)
    |(?P<word>[A-Za-z_][A-Za-z0-9_$]*|`[^`]*`)
    |(?P<punct>:=|[(),=;.*+-])
    """,
    re.VERBOSE | re.DOTALL,
)
# Executable comments (/*!40101 SET ... */, /*M!100001 ...*/): their text runs.
_EXECUTABLE = re.compile(r"/\*M?!\d*\s?(.*?)\*/", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "Z": "\x1a", "b": "\b"}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper()


def _tokens(sql: str) -> list[_Tok]:
    out = []
    pos = 0
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        if m is None:
            raise _SyntaxError(pos)
        kind = m.lastgroup or ""
        if kind != "space":
            out.append(_Tok(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    while out and out[-1].text == ";":
        out.pop()
    return out


def _unquote(text: str) -> str:
    quote, body = text[0], text[1:-1]
    body = body.replace(quote * 2, quote)
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _like(pattern: str) -> re.Pattern[str]:
    out = []
    escaped = False
    for ch in pattern:
        if escaped:
            out.append(re.escape(ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


class _Parser:
    def __init__(self, sql: str, session: Session) -> None:
        self.sql = sql
        self.session = session
        self.toks = _tokens(sql)
        self.i = 0

    # --- cursor ----------------------------------------------------------------------------

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def at(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.upper in words

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise _SyntaxError(len(self.sql))
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.upper != text:
            raise _SyntaxError(tok.start)

    def done(self) -> bool:
        return self.i >= len(self.toks)

    # --- statements ------------------------------------------------------------------------

    def statement(self) -> Reply:
        if self.done():
            return Refused(ErrorCode.PARSE_ERROR, "Query was empty")
        head = self.take().upper
        if head == "SET":
            return self.set()
        if head == "SELECT":
            return self.select()
        if head == "SHOW":
            return self.show()
        if head in ("DO",):
            self.expression()
            return Done()
        raise _Unknown()

    def set(self) -> Reply:
        scope = ""
        if self.at("GLOBAL", "SESSION", "LOCAL"):
            scope = self.take().upper
        assigned: dict[str, Value] = {}
        while True:
            self.assignment(scope, assigned)
            if self.done():
                break
            self.expect(",")
        self.session.user_vars.update(assigned)
        return Done()

    def assignment(self, scope: str, assigned: dict[str, Value]) -> None:
        tok = self.take()
        if tok.kind == "uservar":
            self.take_assign()
            assigned[_user_var_name(tok.text)] = self.expression()
            return
        if tok.upper in ("NAMES", "CHARACTER", "CHARSET"):
            self.skip_item()  # a session's character set: the stream is bytes either way
            return
        if tok.kind == "sysvar":
            scope = tok.text[2:].split(".", 1)[0].upper() if "." in tok.text else scope
        elif tok.kind != "word":
            raise _SyntaxError(tok.start)
        if scope == "GLOBAL":
            raise _Unknown()
        # A session setting (sql_mode, autocommit, net_read_timeout…): nothing here
        # depends on one, so it is accepted and ignored.
        self.take_assign()
        self.skip_item()

    def take_assign(self) -> None:
        tok = self.take()
        if tok.text not in ("=", ":="):
            raise _SyntaxError(tok.start)

    def skip_item(self) -> None:
        depth = 0
        while not self.done():
            tok = self.peek()
            assert tok is not None
            if tok.text == "," and depth == 0:
                return
            depth += {"(": 1, ")": -1}.get(tok.text, 0)
            self.i += 1

    def select(self) -> Reply:
        columns: list[str] = []
        values: list[Value] = []
        while True:
            first = self.peek()
            if first is None:
                raise _SyntaxError(len(self.sql))
            value = self.expression()
            name = self.sql[first.start : self.toks[self.i - 1].end]
            if self.at("AS"):
                self.take()
                name = self.alias()
            elif (
                (tok := self.peek()) is not None
                and tok.kind in ("word", "string")
                and not (self.at("FROM", "LIMIT"))
            ):
                name = self.alias()
            columns.append(name)
            values.append(value)
            if not self.at(","):
                break
            self.take()
        if self.at("FROM"):
            self.take()
            self.expect("DUAL")
        limit = 1
        if self.at("LIMIT"):
            self.take()
            tok = self.take()
            if tok.kind != "number":
                raise _SyntaxError(tok.start)
            limit = int(tok.text)
        if not self.done():
            raise _SyntaxError(self.toks[self.i].start)
        return Rows(columns, [values] if limit > 0 else [])

    def alias(self) -> str:
        tok = self.take()
        if tok.kind == "string":
            return _unquote(tok.text)
        if tok.kind != "word":
            raise _SyntaxError(tok.start)
        return tok.text.strip("`")

    def show(self) -> Reply:
        if self.at("GLOBAL", "SESSION", "LOCAL"):
            self.take()
        if not self.at("VARIABLES"):
            raise _Unknown()
        self.take()
        match: Callable[[str], bool] = lambda _name: True  # noqa: E731
        if self.at("LIKE"):
            self.take()
            pattern = _like(self.string())
            match = lambda name: pattern.fullmatch(name) is not None  # noqa: E731
        elif self.at("WHERE"):
            self.take()
            tok = self.take()
            if tok.text.strip("`").upper() != "VARIABLE_NAME":
                raise _Unknown()
            how = self.take().upper
            wanted = self.string()
            if how == "=":
                match = lambda name: name.lower() == wanted.lower()  # noqa: E731
            elif how == "LIKE":
                pattern = _like(wanted)
                match = lambda name: pattern.fullmatch(name) is not None  # noqa: E731
            else:
                raise _Unknown()
        if not self.done():
            raise _SyntaxError(self.toks[self.i].start)
        rows: list[list[Value]] = [
            [name, _text(value)]
            for name, value in sorted(self.session.system.items())
            if match(name)
        ]
        return Rows(["Variable_name", "Value"], rows)

    def string(self) -> str:
        tok = self.take()
        if tok.kind != "string":
            raise _SyntaxError(tok.start)
        return _unquote(tok.text)

    # --- expressions -----------------------------------------------------------------------

    def expression(self) -> Value:
        tok = self.take()
        if tok.kind == "string":
            return _unquote(tok.text)
        if tok.kind == "number":
            return int(tok.text) if tok.text.isdigit() else tok.text
        if tok.text == "-":
            value = self.expression()
            if not isinstance(value, int):
                raise _SyntaxError(tok.start)
            return -value
        if tok.kind == "uservar":
            return self.session.user_var(_user_var_name(tok.text))
        if tok.kind == "sysvar":
            name = tok.text[2:].rsplit(".", 1)[-1].lower()
            if name not in self.session.system:
                raise _UnknownVariable(name)
            return self.session.system[name]
        if tok.kind != "word":
            raise _SyntaxError(tok.start)
        if tok.upper in ("NULL",):
            return None
        if tok.upper in ("TRUE", "FALSE"):
            return int(tok.upper == "TRUE")
        if self.at("("):
            self.take()
            self.expect(")")
            return self.function(tok.upper)
        raise _SyntaxError(tok.start)

    def function(self, name: str) -> Value:
        s = self.session
        if name == "UNIX_TIMESTAMP":
            return int(s.clock())
        if name == "VERSION":
            return s.system.get("version")
        if name in ("DATABASE", "SCHEMA"):
            return None
        if name in ("USER", "SESSION_USER", "SYSTEM_USER"):
            return f"{s.user}@{s.host}"
        if name == "CURRENT_USER":
            return f"{s.user}@%"
        if name == "CONNECTION_ID":
            return s.connection_id
        raise _Unknown()


def _user_var_name(text: str) -> str:
    name = text[1:]
    if name[:1] in ("`", "'"):
        name = name[1:-1]
    return name.lower()


def _text(value: Value) -> Value:
    return value if value is None or isinstance(value, str) else str(value)


def run(sql: str, session: Session) -> Reply:
    """Run one statement of a replica's session; its reply."""
    text = _EXECUTABLE.sub(r" \1 ", sql)
    try:
        return _Parser(text, session).statement()
    except _SyntaxError as exc:
        near = text[exc.pos : exc.pos + 80]
        return Refused(
            ErrorCode.PARSE_ERROR,
            "You have an error in your SQL syntax; the Selkie binlog server understands "
            f"only what replicas send, near '{near}'",
        )
    except _UnknownVariable as exc:
        return Refused(ErrorCode.UNKNOWN_SYSTEM_VARIABLE, f"Unknown system variable '{exc}'")
    except _Unknown:
        return Refused(
            ErrorCode.NOT_SUPPORTED_YET,
            "The Selkie binlog server does not run this statement (it serves the binary log "
            f"to replicas): '{sql.strip()[:120]}'",
        )
