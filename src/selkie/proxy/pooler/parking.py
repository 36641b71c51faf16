"""A pooled session parked in its pool's fast lane between commands (lane.py, _lane.c).

While parked, the lane owns the client's socket (Python's transport stops reading it) and
runs the commands it can; the session comes back here with the bytes read and not run, the
bytes for the client not yet sent, and a backend when one is bound to it (a transaction
open, session mode, or one taken for a command the lane could not run there). What the lane
ran is noted as the Python path would note it: the session's status, and — handed back
right after such a command — its warnings and LAST_INSERT_ID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from selkie.proxy.pooler.backends import Backend
from selkie.proxy.pooler.lane import BackendStatement, Lane, buffered, socket_fd
from selkie.proxy.pooler.runner import DEPRECATE_EOF, CommandRunner

# Why the lane handed a session back (the WAKE_* enum of _lane.h, in its order).
WAKE_COMMAND, WAKE_CLOSED, WAKE_NOTE, WAKE_TIMEOUT, WAKE_LOST = range(5)


class Parking:
    """The lane's side of a session: parks it there and takes it back. It works on the
    session's :class:`CommandRunner` (its backend, state and status) and tells the session
    through ``lost`` when the compute went away while the lane ran a command."""

    def __init__(self, runner: CommandRunner, *, lost: Callable[[str], Awaitable[bool]]) -> None:
        self.runner = runner
        self._lost = lost
        self.lane: Lane | None = None
        self._fd = -1
        self._lane_session: Any = None
        self._woken: tuple[Any, ...] | None = None
        self._wake: asyncio.Future[None] | None = None
        self.timed_out = False  # the lane gave up waiting for a backend for the next command

    def attach_lane(self, lane: Lane | None) -> None:
        """Use ``lane`` for this session (None: every command in Python)."""
        fd = socket_fd(self.runner.client.writer)
        if lane is None or fd is None:
            return
        self.lane = lane
        self._fd = fd
        self._lane_session = lane.session(self._on_wake)
        self.runner.counters.attach(self._lane_session)

    def serving_backend(self) -> Backend | None:
        """The backend serving this session now: its own, or the one the lane runs its
        command on (None between transactions)."""
        if self.runner.backend is not None:
            return self.runner.backend
        if self._lane_session is not None:
            held: Backend | None = self._lane_session.backend
            return held
        return None

    def detach_lane(self) -> None:
        if self._lane_session is not None:
            self.runner.counters.detach()

    def may_park(self) -> bool:
        b = self.runner.backend
        reader = self.runner.client.reader
        return (
            self.lane is not None
            and not self.runner.pins
            and not self.runner.long_data
            and not self.timed_out
            and (b is None or b.reusable())
            and not self.runner.client.writer.transport.get_write_buffer_size()
            and not buffered(reader)
            and not reader.at_eof()
        )

    def _on_wake(self, *args: Any) -> None:
        self._woken = args
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def park(self) -> bool:
        """Let the lane run this session's commands until one needs Python; False when the
        session is over (its client left, or its state was lost with the compute)."""
        lane = self.lane
        assert lane is not None
        st = self.runner.state
        sig = lane.session_sig(st)
        if sig < 0:
            return True
        transport: Any = self.runner.client.writer.transport
        transport.pause_reading()
        if buffered(self.runner.client.reader):  # arrived meanwhile
            transport.resume_reading()
            return True
        conn, conn_sig, conn_table = None, -1, list[BackendStatement]()
        b = self.runner.backend
        if b is not None:
            entered = lane.enter(b)
            if entered is None:
                transport.resume_reading()
                return True
            conn, conn_sig, conn_table = entered
            self.runner.backend = None
            self.runner.pool.into_lane()  # counted by the lane while it holds it
        self._wake = asyncio.get_running_loop().create_future()
        self._woken = None
        last = self.runner.last.lane_conn if self.runner.last is not None else None
        try:
            lane.park(
                self._lane_session,
                fd=self._fd,
                key=self.runner.key,
                sig=sig,
                statements=lane.session_statements(st),
                release_idle=self.runner.transaction_mode,
                deprecate_eof=bool(self.runner.caps & DEPRECATE_EOF),
                status=self.runner.status,
                conn=conn,
                conn_sig=conn_sig,
                conn_statements=conn_table,
                last=last,
            )
        except OSError:  # the lane cannot watch the sockets: this command goes in Python
            transport.resume_reading()
            if b is not None:
                b.writer.transport.resume_reading()  # type: ignore[attr-defined]
                self.runner.backend = b
                self.runner.pool.out_of_lane()
            self.lane = None  # and the rest of the session's
            return True
        try:
            await self._wake
        except BaseException:
            lane.unpark(self._lane_session)  # hands it back at once (it was cancelled)
            self._resume()
            raise
        return await self._woke()

    def _resume(self) -> tuple[Any, ...]:
        """Take the session back from the lane: the socket, the bytes, the backend."""
        woken = self._woken
        assert woken is not None
        self._woken = None
        _, data, to_client, backend, status, _, _, broken = woken
        writer = self.runner.client.writer
        transport: Any = writer.transport
        transport.resume_reading()
        if to_client:
            writer.write(to_client)
        if data:
            self.runner.client.reader.feed_data(data)
        if isinstance(backend, Backend):
            backend.writer.transport.resume_reading()  # type: ignore[attr-defined]
            self.runner.pool.out_of_lane()
            self.runner.backend = self.runner.last = backend
            # Mid-answer (the client or the compute went away while the lane relayed it):
            # the rest may still come, so nobody can use it; the release closes it.
            backend.answering = bool(broken)
            if broken:
                backend.close()
        self.runner.status = status
        return woken

    async def _woke(self) -> bool:
        reason, _, _, _, _, warnings, last_insert_id, _ = self._resume()
        if reason == WAKE_CLOSED:
            self.runner.client.reader.feed_eof()
        elif reason == WAKE_TIMEOUT:
            self.timed_out = True  # the command is answered with the pool's timeout error
        elif reason == WAKE_NOTE:
            if last_insert_id:
                self.runner.state.last_insert_id = last_insert_id
                if self.runner.backend is not None:
                    self.runner.backend.last_insert_id = last_insert_id
            if warnings:
                self.runner.pins.add("warnings")  # until read: the next command runs here too
            self.runner.update_pin_metric()
            if self.runner.may_release():
                await self.runner.release()
        elif reason == WAKE_LOST:
            return await self._lost("the compute closed the connection")
        return True
