"""A pooled client session: commands are read whole, run on a backend borrowed from the
endpoint's pool, and their responses parsed on the way back so the proxy knows when a
command is over, whether a transaction is open, and what the session has become.

Transaction mode returns the backend after every command that leaves no transaction open
and no pin; session mode keeps it. Either way the session's state (database, known SET
variables, LAST_INSERT_ID, prepared statements) is tracked, so a new backend can be given
the same state — which is also how an idle session survives its endpoint being suspended.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable

from selkie.mysql.packets import Err, build_err, build_ok
from selkie.mysql.response import Summary
from selkie.mysql.wire import Command, ErrorCode, PacketTooLarge, ProtocolError, ServerStatus
from selkie.proxy.pooler.backends import Backend
from selkie.proxy.pooler.lane import Lane, plain
from selkie.proxy.pooler.parking import Parking
from selkie.proxy.pooler.pool import PoolTimeout
from selkie.proxy.pooler.runner import (
    STATEMENT_COMMANDS,
    BackendLost,
    CommandRefused,
    CommandRunner,
)
from selkie.proxy.pooler.sqlscan import PSEUDO, Effect, classify
from selkie.proxy.pooler.state import record_sets
from selkie.proxy.sessions import may_kill

# Commands whose payload starts with a 4-byte statement id.
WITH_STATEMENT_ID = STATEMENT_COMMANDS | {Command.STMT_CLOSE}
CURSOR_FLAGS = 0x0F  # COM_STMT_EXECUTE: read-only, for-update, scrollable cursor types
# The owner of a backend whose session state is not known: the next user resets it.
UNKNOWN_OWNER = object()


class PooledSession:
    """One pooled client: its commands read here, run by its :class:`CommandRunner`, and
    parked in the fast lane between them by its :class:`Parking` when there is one."""

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self.parking = Parking(self.runner, lost=self.lost)
        # A KILL's COM_QUERY payload -> (its payload for the compute, or the proxy's
        # answer): the proxy's sessions by greeting id (sessions.py), set by the pooler.
        self.kill: Callable[[bytes], tuple[bytes | None, bytes | None]] | None = None

    def attach_lane(self, lane: Lane | None) -> None:
        """Use ``lane`` for this session (None: every command in Python)."""
        self.parking.attach_lane(lane)

    def serving_backend(self) -> Backend | None:
        """The backend serving this session now (what a KILL of it reaches)."""
        return self.parking.serving_backend()

    async def login(self) -> Err | None:
        """Borrow a backend once so a bad database or a dead compute shows at connect. Only
        the database is put in place: whether another client's state must be wiped is
        decided by the first command (which often sets that state itself, as drivers'
        ``SET NAMES`` on connect do)."""
        r = self.runner
        b = await r.acquire()
        if b.owner is None or b.owner is r:
            err = await r.sync(b, need_last_insert_id=False)
        else:
            err = await r.put_database(b)
        if err is not None or r.may_release():
            await r.release()
        return err

    async def run(self) -> None:
        r = self.runner
        try:
            while True:
                if self.parking.may_park():
                    if not await self.parking.park():
                        return
                    continue
                try:
                    seq, payload = await r.client.read()
                except (ConnectionError, asyncio.IncompleteReadError):
                    return
                except PacketTooLarge as exc:
                    r.client.write(
                        (exc.seq + 1) & 0xFF,
                        build_err(
                            ErrorCode.NET_PACKET_TOO_LARGE,
                            f"Got a packet bigger than the pooler's limit ({exc.limit} "
                            "bytes); send it over a session (non-pooled) connection",
                        ),
                    )
                    await r.client.writer.drain()
                    return
                if seq != 0 or not payload:
                    raise ProtocolError("a command must start with sequence id 0")
                r.counters.client_sent(len(payload) + 4, 1)
                command = payload[0]
                if command == Command.QUIT:
                    return
                if command in WITH_STATEMENT_ID and len(payload) < 5:
                    # A statement command too short to name its statement: this session
                    # ends with an answer, and nothing else is disturbed (nor logged).
                    await r.reply(
                        1,
                        build_err(ErrorCode.MALFORMED_PACKET, "Malformed communication packet"),
                    )
                    return
                try:
                    if self.parking.timed_out:  # the lane waited for a backend for this command
                        self.parking.timed_out = False
                        raise PoolTimeout
                    await self._command(command, payload)
                except CommandRefused as exc:
                    await r.reply(1, build_err(exc.code, exc.message, exc.sqlstate))
                except PoolTimeout:
                    await r.error(
                        ErrorCode.TOO_MANY_CONNECTIONS,
                        f"all {r.pool.cap} backend connections of endpoint "
                        f"{r.pool.endpoint_id} are busy; waited {r.pool.wait_timeout:.0f}s",
                    )
                except BackendLost as exc:
                    if not await self.lost(str(exc)):
                        return
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    # The client left (the backend's failures are BackendLost), maybe in
                    # the middle of its answer: the release below decides what the backend
                    # is fit for.
                    return
                r.update_pin_metric()
        finally:
            self.parking.detach_lane()
            # A client gone in the middle of a transaction or with a pinned session leaves
            # state nobody can use: close that backend (the server rolls back) rather than
            # lend it out. One whose answer was not read to its end is closed by the pool
            # whatever the session's state (Backend.answering).
            dirty = r.pinned or bool(r.status & ServerStatus.IN_TRANS)
            await r.release(broken=dirty)
            if r.pinned_counted:
                r.pool.pin_changed(False)

    async def lost(self, why: str) -> bool:
        r = self.runner
        await r.release(broken=True)
        lost_state = r.pinned or bool(r.status & ServerStatus.IN_TRANS)
        await r.error(
            ErrorCode.CONNECTION_KILLED,
            f"lost the connection to endpoint {r.pool.endpoint_id}'s compute ({why}); reconnect",
        )
        return not lost_state

    async def _command(self, command: int, payload: bytes) -> None:
        """One client command: answered here, or run on a backend and its outcome noted."""
        r = self.runner
        local = _ANSWERED_HERE.get(command)
        if local is not None:
            await local(self, payload)
            return
        if command == Command.SET_OPTION and len(payload) >= 3:
            r.state.multi_statements = struct.unpack("<H", payload[1:3])[0] == 0
        stmt = None
        if command in STATEMENT_COMMANDS:
            stmt = struct.unpack("<I", payload[1:5])[0]
            if not await self._statement_usable(command, payload, stmt):
                return
        if command == Command.QUERY and self.kill is not None and may_kill(payload):
            # A KILL naming a session by its greeting id: the compute's id for it, or the
            # proxy's own answer (sessions.py).
            rewritten, answer = self.kill(payload)
            if answer is not None or rewritten is None:
                await r.reply(1, answer or build_ok())
                return
            payload = rewritten
        if command == Command.QUERY:
            effect: Effect | None = classify(payload[1:].decode(errors="replace"))
            if self.parking.lane is not None and effect is not None and plain(effect):
                self.parking.lane.plain_query(payload[1:])
        elif command == Command.STMT_EXECUTE and stmt is not None:
            effect = r.state.prepared[stmt].effect
        else:
            effect = None
        summary = await r.run_command(command, payload, effect=effect)
        r.status = summary.status
        if effect is not None:
            await self._note_effect(effect, summary)
        self._note_outcome(command, payload, stmt, summary)
        if r.may_release():
            await r.release()

    # --- commands answered without running them as they are ---------------------------------

    async def _ping(self, _: bytes) -> None:
        await self.runner.reply(1, build_ok(status=self.runner.status))

    async def _reset_connection(self, payload: bytes) -> None:
        r = self.runner
        st = r.state
        st.sets.clear()
        st.prepared.clear()
        st.last_insert_id = None
        r.pins.clear()
        r.long_data.clear()
        if r.backend is None:
            await r.reply(1, build_ok())
            return
        await r.run_command(Command.RESET_CONNECTION, payload)
        r.backend.forget_session()
        r.status = int(ServerStatus.AUTOCOMMIT)
        await r.release()

    async def _change_user(self, _: bytes) -> None:
        await self.runner.error(
            ErrorCode.UNKNOWN_COM_ERROR,
            "COM_CHANGE_USER is not supported on pooled connections; connect as the other "
            "role instead",
        )

    async def _stmt_close(self, payload: bytes) -> None:
        """Only the client's id goes: the backend keeps the statement for its next user
        (its cache is bounded) unless long data sent for it is pending there."""
        r = self.runner
        stmt = struct.unpack("<I", payload[1:5])[0]
        r.state.prepared.pop(stmt, None)
        pending = r.long_data.get(stmt)
        if pending is None:
            return
        if r.backend is not None:
            r.backend.drop_statement(pending)  # its long data goes with it
            with contextlib.suppress(ConnectionError, OSError):
                await r.backend.writer.drain()
        self._long_data_done(stmt)
        if r.may_release():
            await r.release()

    async def _statement_usable(self, command: int, payload: bytes, stmt: int) -> bool:
        """Whether a command on prepared statement ``stmt`` can run (the client told why
        not, when not)."""
        r = self.runner
        if stmt not in r.state.prepared:
            await r.error(ErrorCode.UNKNOWN_COM_ERROR, f"Unknown prepared statement {stmt}")
            return False
        if command == Command.STMT_FETCH or (
            command == Command.STMT_EXECUTE and len(payload) > 5 and payload[5] & CURSOR_FLAGS
        ):
            await r.error(
                ErrorCode.NOT_SUPPORTED_YET,
                "server-side cursors are not supported on pooled connections; connect "
                "without the -pooler suffix to use them",
            )
            return False
        return True

    # --- what a command left ----------------------------------------------------------------

    async def _note_effect(self, effect: Effect, summary: Summary) -> None:
        """What a statement did to the session, as its text said (SET, USE, a pin)."""
        r = self.runner
        st, b = r.state, r.backend
        # Pins and untracked changes count even when the command failed part-way.
        if effect.pin:
            r.pins.add(effect.reason)
        if effect.untracked and b is not None:
            b.dirty = True
        if summary.error is not None:
            if (effect.sets or effect.database) and b is not None:
                # Some of its SETs may have run: not for another client to inherit.
                b.dirty = True
            return
        sets = dict(effect.sets)
        if b is not None and (relative := set(sets) - effect.overwrites - PSEUDO):
            # SET x = f(@@x): replaying that text elsewhere would build on another
            # session's value. What it gave here is what is kept and replayed.
            values = await r.current_values(b, relative)
            if values is None:
                b.dirty = True  # not known: nobody else gets this backend as it is
            else:
                sets.update(values)
        record_sets(st.sets, sets)
        if b is not None:
            record_sets(b.sets, sets)
        if effect.database:
            st.database = effect.database
            if b is not None:
                b.database = effect.database
        if effect.unpin_lock_tables:
            r.pins.discard("LOCK TABLES")

    def _note_outcome(
        self, command: int, payload: bytes, stmt: int | None, summary: Summary
    ) -> None:
        """What any command's response left: a database, LAST_INSERT_ID, warnings to read,
        long data waiting for its execute."""
        r = self.runner
        st, b = r.state, r.backend
        if command == Command.INIT_DB and summary.error is None:
            st.database = payload[1:].decode(errors="replace")
            if r.backend is not None:
                r.backend.database = st.database
        if summary.last_insert_id:
            st.last_insert_id = summary.last_insert_id
            if r.backend is not None:
                r.backend.last_insert_id = summary.last_insert_id
        if summary.error is not None and r.overwriting and r.backend is not None:
            # What was to replace another client's values failed: they are still there, so
            # whoever uses this backend next gets it reset.
            r.backend.dirty = True
            r.backend.owner = UNKNOWN_OWNER
        if summary.warnings:
            r.pins.add("warnings")  # until read: the next command runs here too
        elif command == Command.QUERY:
            r.pins.discard("warnings")
        if command == Command.STMT_SEND_LONG_DATA and stmt is not None and b is not None:
            bs = b.statement(st.prepared[stmt].sql)
            if bs is not None:
                r.long_data[stmt] = bs
            r.pins.add("long data")
        elif command in (Command.STMT_EXECUTE, Command.STMT_RESET) and stmt is not None:
            self._long_data_done(stmt)

    def _long_data_done(self, stmt: int) -> None:
        """Long data for ``stmt`` was used or dropped; the pin goes with the last of it."""
        r = self.runner
        r.long_data.pop(stmt, None)
        if not r.long_data:
            r.pins.discard("long data")


# Commands the session answers (or rewrites) itself.
_ANSWERED_HERE: dict[int, Callable[[PooledSession, bytes], Awaitable[None]]] = {
    Command.PING: PooledSession._ping,
    Command.RESET_CONNECTION: PooledSession._reset_connection,
    Command.CHANGE_USER: PooledSession._change_user,
    Command.STMT_CLOSE: PooledSession._stmt_close,
}
