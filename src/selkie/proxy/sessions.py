"""Client sessions by the id their greeting carried, and `KILL` with that id.

The greeting is sent before the compute is known (it may be asleep), so its connection id
is the proxy's own, not the compute's thread id; drivers hold that id and `KILL` with it
(PyMySQL's ``thread_id()``, node-mysql2's ``threadId``, DBD's ``mysql_thread_id``). The
proxy's ids lie in the upper half of the 32-bit range, above every thread id a compute gives
out (counted from 1 at each start), so an id there is always the proxy's. A client's
``KILL [HARD|SOFT] [CONNECTION|QUERY] <id>`` with such an id is rewritten to the thread id of
the compute connection serving that session now, when the session is of the same endpoint
and role (the server lets a role kill only its own threads; the proxy does the same for its
ids); any other proxy id is "Unknown thread id", as the server says. A pooled session holding
no backend runs nothing: ``KILL QUERY`` is a no-op, ``KILL [CONNECTION]`` ends the client's
session here. Only that one statement shape is read, and only in a command of at most
``KILL_MAX`` bytes; anything else (a comment before it, ``KILL USER``) goes on unchanged.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from selkie.mysql.packets import build_err, build_ok
from selkie.mysql.wire import Command, ErrorCode

SESSION_ID_BASE = 1 << 31
# The longest COM_QUERY payload looked at for a KILL (the relays hold back commands up to
# this size until they are whole, and no longer).
KILL_MAX = 80
_KILL = re.compile(
    rb"\s*KILL\s+(?:(?:HARD|SOFT)\s+)?(?P<what>CONNECTION\s+|QUERY\s+(?:ID\s+)?)?"
    rb"(?P<id>\d{1,10})\s*;?\s*",
    re.IGNORECASE,
)


def session_ids() -> Iterator[int]:
    """Greeting ids: from SESSION_ID_BASE up, starting anywhere, wrapping within the range."""
    first = secrets.randbelow(SESSION_ID_BASE)
    return (SESSION_ID_BASE + (first + n) % SESSION_ID_BASE for n in itertools.count())


def may_kill(payload: bytes) -> bool:
    """Whether a command could be a KILL the proxy reads (the relays' cheap first test, which
    ``_crelay.c`` makes the same way): a short COM_QUERY starting with ``KILL`` and a space."""
    return (
        0 < len(payload) <= KILL_MAX
        and payload[0] == Command.QUERY
        and payload[1:5].upper() == b"KILL"
        and payload[5:6] in (b" ", b"\t", b"\n", b"\r")
    )


@dataclass(frozen=True)
class Live:
    """A client session, as another session's KILL may reach it."""

    endpoint_id: str
    role: str
    # The compute thread serving it now (None: a pooled session between transactions).
    thread_id: Callable[[], int | None]
    # Ends the client's session here (a pooled session holding no backend).
    end: Callable[[], None]


class LiveSessions:
    """This proxy's sessions by greeting id (on the event loop only)."""

    def __init__(self) -> None:
        self._by_id: dict[int, Live] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, session_id: int, live: Live) -> None:
        self._by_id[session_id] = live

    def remove(self, session_id: int) -> None:
        self._by_id.pop(session_id, None)

    def kill(
        self, payload: bytes, endpoint_id: str, role: str
    ) -> tuple[bytes | None, bytes | None]:
        """A client's COM_QUERY ``payload`` that ``may_kill``: (the payload to run on its
        compute, or None; the answer for the client instead, or None)."""
        found = _KILL.fullmatch(payload, 1)
        if found is None:
            return payload, None
        target_id = int(found["id"])
        if target_id < SESSION_ID_BASE:
            return payload, None  # a compute's thread id (from CONNECTION_ID()): as it is
        target = self._by_id.get(target_id)
        if target is None or (target.endpoint_id, target.role) != (endpoint_id, role):
            return None, build_err(ErrorCode.NO_SUCH_THREAD, f"Unknown thread id: {target_id}")
        thread = target.thread_id()
        if thread is None:
            if not (found["what"] or b"").upper().startswith(b"QUERY"):
                target.end()
            return None, build_ok()
        start, end = found.span("id")
        return payload[:start] + str(thread).encode() + payload[end:], None
