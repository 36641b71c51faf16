"""A backend: one logged-in connection to a compute, shared in turn by pooled sessions of
one kind (role, response-shaping capabilities, charset), with the session state applied on
it and the statements prepared there."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from selkie.mysql.stream import PacketStream
from selkie.mysql.wire import Capability, Command

# Capabilities that change how responses are encoded: backends are shared only between
# clients that agree on them.
FORMAT_CAPS = (
    Capability.DEPRECATE_EOF
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.SESSION_TRACK
    | Capability.FOUND_ROWS
    | Capability.LOCAL_FILES
    | Capability.MULTI_STATEMENTS
    | Capability.LONG_FLAG
    | Capability.PROTOCOL_41
    | Capability.MARIADB_EXTENDED_METADATA
)


@dataclass(frozen=True)
class PoolKey:
    role: str
    caps: int
    charset: int


# Statements kept prepared per backend connection. The server's max_prepared_stmt_count
# is shared by all its connections: computes are configured with room for about this many
# on every pooled backend (compute.mariadb.render_config), and a backend gives back half of
# its own when the server has no room left (proxy.pooled).
MAX_STATEMENTS = 64
# (database, tracked variables, SQL)
StatementKey = tuple[str | None, frozenset[tuple[str, str]], bytes]


@dataclass
class BackendStatement:
    id: int  # the compute's statement id
    types: bytes | None = None  # parameter types last bound on it (they stick until re-sent)


@dataclass(eq=False)
class Backend:
    key: PoolKey
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stream: PacketStream
    thread_id: int = 0  # the compute's id for this connection (what KILL takes)
    # Session state as applied on this connection, to replay only what differs.
    database: str | None = None
    sets: dict[str, str] = field(default_factory=dict)
    last_insert_id: int | None = None
    multi_statements: bool | None = None
    # Statements prepared here, by the session state they were prepared in (database and
    # tracked variables: both bind a statement) and SQL text, least recently used first:
    # clients in that state execute through them, so a statement is prepared once per
    # backend, not once per client that lands here.
    statements: OrderedDict[StatementKey, BackendStatement] = field(default_factory=OrderedDict)
    owner: object | None = None  # the client session that used it last
    # The last owner ran something that may change session state the proxy does not track
    # (a stored procedure): the next client gets the backend reset.
    dirty: bool = False
    # A command was sent and its response not read to its end (its client left, or the
    # reading failed or was cancelled mid-way): the compute may still be sending it, so
    # the connection is closed on release, never lent out.
    answering: bool = False
    # The fast lane's handle on its socket, once it has been there.
    lane_conn: Any = field(default=None, repr=False)

    def alive(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def reusable(self) -> bool:
        """Whether another command (another client's) may be sent here: open, and the
        last response read to its end."""
        return not self.answering and self.alive()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def forget_session(self) -> None:
        """After COM_RESET_CONNECTION: the server dropped variables and statements."""
        self.sets.clear()
        self.statements.clear()
        self.last_insert_id = None
        self.multi_statements = None
        self.dirty = False

    def _statement_key(self, sql: bytes) -> StatementKey:
        return (self.database, frozenset(self.sets.items()), sql)

    def statement(self, sql: bytes) -> BackendStatement | None:
        """The statement for ``sql`` prepared here in the session state now in place."""
        key = self._statement_key(sql)
        found = self.statements.get(key)
        if found is not None:
            self.statements.move_to_end(key)
        return found

    def remember(self, sql: bytes, stmt_id: int) -> BackendStatement:
        """Note a statement prepared here in the state now in place; one prepared earlier
        for the same, and the least recently used beyond the cap, are closed on the server
        (COM_STMT_CLOSE has no response, so this costs no round trip)."""
        key = self._statement_key(sql)
        old = self.statements.pop(key, None)
        if old is not None and old.id != stmt_id:
            self._close_statement(old.id)
        stmt = self.statements[key] = BackendStatement(stmt_id)
        self._close_oldest(len(self.statements) - MAX_STATEMENTS)
        return stmt

    def shrink_statements(self) -> None:
        """Close the least recently used half of the statements kept here."""
        self._close_oldest((len(self.statements) + 1) // 2)

    def _close_oldest(self, count: int) -> None:
        for _ in range(count):
            self._close_statement(self.statements.popitem(last=False)[1].id)

    def drop_statement(self, stmt: BackendStatement) -> None:
        """Close ``stmt`` on the server, and forget it if it is still kept here."""
        for key, kept in self.statements.items():
            if kept is stmt:
                del self.statements[key]
                break
        self._close_statement(stmt.id)

    def _close_statement(self, stmt_id: int) -> None:
        self.stream.write(0, bytes([Command.STMT_CLOSE]) + stmt_id.to_bytes(4, "little"))
