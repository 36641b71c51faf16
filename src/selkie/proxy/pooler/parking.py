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
from typing import Any

from selkie.proxy.pooler.lane import BackendStatement, Lane, buffered, socket_fd
from selkie.proxy.pooler.pool import Backend
from selkie.proxy.pooler.runner import DEPRECATE_EOF, CommandRunner

# Why the lane handed a session back (the WAKE_* enum of _lane.h, in its order).
WAKE_COMMAND, WAKE_CLOSED, WAKE_NOTE, WAKE_TIMEOUT, WAKE_LOST = range(5)


class Parking(CommandRunner):
    lane: Lane | None = None
    _lane_session: Any = None
    _woken: tuple[Any, ...] | None = None
    _wake: asyncio.Future[None] | None = None
    timed_out = False  # the lane gave up waiting for a backend for the next command

    def attach_lane(self, lane: Lane | None) -> None:
        """Use ``lane`` for this session (None: every command in Python)."""
        fd = socket_fd(self.client.writer)
        if lane is None or fd is None:
            return
        self.lane = lane
        self._fd = fd
        self._lane_session = lane.session(self._on_wake)
        self.counters.attach(self._lane_session)

    def serving_backend(self) -> Backend | None:
        """The backend serving this session now: its own, or the one the lane runs its
        command on (None between transactions)."""
        if self.backend is not None:
            return self.backend
        if self._lane_session is not None:
            held: Backend | None = self._lane_session.backend
            return held
        return None

    def detach_lane(self) -> None:
        if self._lane_session is not None:
            self.counters.detach()

    def _may_park(self) -> bool:
        b = self.backend
        reader = self.client.reader
        return (
            self.lane is not None
            and not self.pins
            and not self._long_data
            and not self.timed_out
            and (b is None or b.reusable())
            and not self.client.writer.transport.get_write_buffer_size()
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
        st = self.state
        sig = lane.session_sig(st)
        if sig < 0:
            return True
        transport: Any = self.client.writer.transport
        transport.pause_reading()
        if buffered(self.client.reader):  # arrived meanwhile
            transport.resume_reading()
            return True
        conn, conn_sig, conn_table = None, -1, list[BackendStatement]()
        b = self.backend
        if b is not None:
            entered = lane.enter(b)
            if entered is None:
                transport.resume_reading()
                return True
            conn, conn_sig, conn_table = entered
            self.backend = None
            self.pool.held -= 1  # counted by the lane while it holds it
        self._wake = asyncio.get_running_loop().create_future()
        self._woken = None
        last = self._last.lane_conn if self._last is not None else None
        try:
            lane.park(
                self._lane_session,
                fd=self._fd,
                key=self.key,
                sig=sig,
                statements=lane.session_statements(st),
                release_idle=self.transaction_mode,
                deprecate_eof=bool(self.caps & DEPRECATE_EOF),
                status=self.status,
                conn=conn,
                conn_sig=conn_sig,
                conn_statements=conn_table,
                last=last,
            )
        except OSError:  # the lane cannot watch the sockets: this command goes in Python
            transport.resume_reading()
            if b is not None:
                b.writer.transport.resume_reading()  # type: ignore[attr-defined]
                self.backend = b
                self.pool.held += 1
            self.lane = None  # and the rest of the session's
            return True
        try:
            await self._wake
        except BaseException:
            lane.c.unpark(self._lane_session)  # hands it back at once (it was cancelled)
            self._resume()
            raise
        return await self._woke()

    def _resume(self) -> tuple[Any, ...]:
        """Take the session back from the lane: the socket, the bytes, the backend."""
        woken = self._woken
        assert woken is not None
        self._woken = None
        _, data, to_client, backend, status, _, _, broken = woken
        writer = self.client.writer
        transport: Any = writer.transport
        transport.resume_reading()
        if to_client:
            writer.write(to_client)
        if data:
            self.client.reader.feed_data(data)
        if isinstance(backend, Backend):
            backend.writer.transport.resume_reading()  # type: ignore[attr-defined]
            self.pool.held += 1
            self.backend = self._last = backend
            # Mid-answer (the client or the compute went away while the lane relayed it):
            # the rest may still come, so nobody can use it; the release closes it.
            backend.answering = bool(broken)
            if broken:
                backend.close()
        self.status = status
        return woken

    async def _woke(self) -> bool:
        reason, _, _, _, _, warnings, last_insert_id, _ = self._resume()
        if reason == WAKE_CLOSED:
            self.client.reader.feed_eof()
        elif reason == WAKE_TIMEOUT:
            self.timed_out = True  # the command is answered with the pool's timeout error
        elif reason == WAKE_NOTE:
            if last_insert_id:
                self.state.last_insert_id = last_insert_id
                if self.backend is not None:
                    self.backend.last_insert_id = last_insert_id
            if warnings:
                self.pins.add("warnings")  # until read: the next command runs here too
            self._update_pin_metric()
            if self._may_release():
                await self._release()
        elif reason == WAKE_LOST:
            return await self.lost("the compute closed the connection")
        return True

    async def lost(self, why: str) -> bool:
        """The compute went away during a command: the client is told; False when the
        session's state went with it."""
        raise NotImplementedError
