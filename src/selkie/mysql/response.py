"""Where a command's response ends, and how it ended: a reader without I/O.

The pooler must know when a compute has finished answering a command (to lend the
connection to someone else) and what the answer left behind (a transaction open, a
LAST_INSERT_ID, a prepared statement's id). :class:`ResponseReader` is fed the response's
bytes as they arrive and answers with the complete packets that can be passed on and what
comes next: more bytes, the client's file for ``LOAD DATA LOCAL``, or the end. Only packet
boundaries, the first byte of each packet and the small terminators are looked at.

::

    FIRST ──OK/ERR──▶ DONE            (OK with MORE_RESULTS_EXISTS: FIRST again)
      │──column count──▶ COLUMN_DEFS ──▶ [COLUMNS_EOF] ──▶ ROWS ──EOF/OK/ERR──▶ DONE
      │──0xFB (LOCAL INFILE)──▶ FIRST, after the client's file
      │──COM_FIELD_LIST──▶ UNTIL_EOF ──EOF/ERR──▶ DONE
      └──COM_STMT_PREPARE OK──▶ PREPARE (parameter, then column definitions) ──▶ DONE
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from selkie.mysql.packets import Err, parse_err, parse_ok
from selkie.mysql.wire import MAX_PAYLOAD, Command, Reader, ServerStatus

# As a plain int: a flag test on the enum costs more than the rest of a small response.
MORE_RESULTS = int(ServerStatus.MORE_RESULTS_EXISTS)
# Commands the server does not answer.
NO_RESPONSE = frozenset({Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA})


class Phase(enum.Enum):
    FIRST = enum.auto()  # a response's (or a further result's) first packet
    COLUMN_DEFS = enum.auto()  # column definitions of a result set
    COLUMNS_EOF = enum.auto()  # the EOF after them (clients without DEPRECATE_EOF)
    ROWS = enum.auto()  # rows, until EOF (or OK) or ERR
    UNTIL_EOF = enum.auto()  # COM_FIELD_LIST: definitions until EOF
    PREPARE = enum.auto()  # COM_STMT_PREPARE: parameter, then column definitions
    DONE = enum.auto()


class Event(enum.Enum):
    NEED_DATA = enum.auto()  # feed more bytes from the compute
    LOCAL_INFILE = enum.auto()  # send the client's file to the compute, then feed again
    DONE = enum.auto()  # the response is over; the summary says how


@dataclass
class Summary:
    """How a response ended."""

    status: int = ServerStatus.AUTOCOMMIT
    warnings: int = 0
    last_insert_id: int = 0
    error: Err | None = None
    stmt_id: int | None = None
    num_params: int = 0


class ResponseReader:
    __slots__ = (
        "_continued",
        "_pending",
        "_pos",
        "_remaining",
        "_sections",
        "command",
        "deprecate_eof",
        "phase",
        "summary",
    )

    def __init__(self, command: int, *, deprecate_eof: bool, status: int) -> None:
        """``status`` is the session's status before the command (what a response that
        carries none leaves)."""
        self.command = command
        self.deprecate_eof = deprecate_eof
        self.summary = Summary(status=status)
        self.phase = Phase.DONE if command in NO_RESPONSE else Phase.FIRST
        self._pending = bytearray()
        self._pos = 0  # where the first packet not yet looked at starts
        self._remaining = 0  # packets left in the current counted section
        self._sections: list[int] = []  # prepare: counts still to read after the current one
        self._continued = False  # the next frame continues a 16 MiB packet

    def feed(self, data: bytes) -> tuple[bytes, Event]:
        """Take the next bytes of the response. Returns the complete packets that may be
        passed on now, and what comes next. Bytes after the end of the response (a server
        does not send any) are dropped."""
        if self.phase is Phase.DONE:
            return b"", Event.DONE
        if data:
            self._pending += data
        event = self._parse()
        pos, self._pos = self._pos, 0
        out = bytes(self._pending[:pos])
        if event is Event.DONE:
            self._pending.clear()
        else:
            del self._pending[:pos]
        return out, event

    def _parse(self) -> Event:
        pending = self._pending
        size = len(pending)
        pos = self._pos
        continued = self._continued
        try:
            while pos + 4 <= size:
                length = pending[pos] | pending[pos + 1] << 8 | pending[pos + 2] << 16
                end = pos + 4 + length
                if end > size:
                    break
                was_continued, continued = continued, length == MAX_PAYLOAD
                head = pending[pos + 4] if length else -1
                pos = end
                if was_continued or (0 <= head < 0xFE and self.phase is Phase.ROWS):
                    continue  # the rest of a 16 MiB packet, or a row: passed on unread
                self._pos = pos
                event = self._packet(head, length)
                if event is not None:
                    return event
            return Event.NEED_DATA
        finally:
            self._pos = pos
            self._continued = continued

    def _payload(self, length: int) -> bytes:
        """The payload of the packet just looked at (copied only when needed: most rows
        are passed on unread)."""
        return bytes(self._pending[self._pos - length : self._pos])

    def _packet(self, head: int, length: int) -> Event | None:
        """One whole packet, with its first byte (-1 when empty) and its length."""
        phase = self.phase
        if phase is Phase.ROWS or phase is Phase.UNTIL_EOF:
            return self._row(head, length)
        if phase is Phase.FIRST:
            return self._first(head, length)
        if phase is Phase.COLUMN_DEFS:
            self._remaining -= 1
            if self._remaining == 0:
                self.phase = Phase.ROWS if self.deprecate_eof else Phase.COLUMNS_EOF
        elif phase is Phase.COLUMNS_EOF:
            self.phase = Phase.ROWS
        elif phase is Phase.PREPARE:
            self._remaining -= 1
            if self._remaining == 0:
                if not self._sections:
                    return self._done()
                self._remaining = self._sections.pop(0)
        return None

    def _first(self, head: int, length: int) -> Event | None:
        command, summary = self.command, self.summary
        if head == 0xFF:
            summary.error = parse_err(self._payload(length))
            return self._done()
        if command == Command.STATISTICS:
            return self._done()
        if command == Command.STMT_PREPARE and head == 0x00:
            r = Reader(self._payload(length))
            r.int1()
            summary.stmt_id = r.int4()
            num_columns, num_params = r.int2(), r.int2()
            summary.num_params = num_params
            extra = 0 if self.deprecate_eof else 1
            self._sections = [n + extra for n in (num_params, num_columns) if n]
            if not self._sections:
                return self._done()
            self._remaining = self._sections.pop(0)
            self.phase = Phase.PREPARE
            return None
        if head == 0x00 or (head == 0xFE and length < 9 and command != Command.FIELD_LIST):
            ok = parse_ok(self._payload(length))
            summary.status, summary.warnings = ok.status, ok.warnings
            if ok.last_insert_id:
                summary.last_insert_id = ok.last_insert_id
            return None if ok.status & MORE_RESULTS else self._done()
        if head == 0xFB and command == Command.QUERY:
            return Event.LOCAL_INFILE
        if command == Command.FIELD_LIST:
            self.phase = Phase.UNTIL_EOF
            return None
        self._remaining = Reader(self._payload(length)).lenenc_int()
        if self._remaining:
            self.phase = Phase.COLUMN_DEFS
        else:
            self.phase = Phase.ROWS if self.deprecate_eof else Phase.COLUMNS_EOF
        return None

    def _row(self, head: int, length: int) -> Event | None:
        summary = self.summary
        if head == 0xFF:
            summary.error = parse_err(self._payload(length))
            return self._done()
        rows = self.phase is Phase.ROWS
        if head != 0xFE or length >= (MAX_PAYLOAD if rows and self.deprecate_eof else 9):
            return None  # a row (or a definition)
        payload = self._payload(length)
        if rows and self.deprecate_eof:
            ok = parse_ok(payload)
            summary.status, summary.warnings = ok.status, ok.warnings
        elif len(payload) >= 5:
            summary.warnings, summary.status = struct.unpack("<HH", payload[1:5])
        if rows and summary.status & MORE_RESULTS:
            self.phase = Phase.FIRST
            return None
        return self._done()

    def _done(self) -> Event:
        self.phase = Phase.DONE
        return Event.DONE
