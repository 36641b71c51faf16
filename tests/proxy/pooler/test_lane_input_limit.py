"""The fast lane reads no more of a parked client than its next command (security review:
a client sending 512 MiB while its previous command ran grew the proxy by as much). A huge
packet sent while a command runs in the lane ends with ERR 1153 (SQLSTATE 08S01) or a close
for that client only, and the proxy's memory stays flat; a client pipelining commands
without reading their answers waits in its socket, and gets every answer once it reads. The
proxy runs in this process: its memory is this process's (VmHWM, reset first)."""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from selkie.mysql.packets import parse_err
from selkie.mysql.stream import frame
from tests.proxy.conftest import Db
from tests.proxy.pooler.test_client_leaves import settled
from tests.proxy.pooler.test_lane import lane_db
from tests.proxy.pooler.test_pool import conn, pool, q, raw_pooled
from tests.proxy.test_fuzz import recv_packet

pytestmark = pytest.mark.timeout(300)

MiB = 2**20
GROWTH_MAX = 32 * MiB  # what the proxy may grow by, at most, while far more is sent
SLOW = b"SELECT SLEEP(2)"
# A plain text of about 4 KiB (the lane runs texts up to 4 KiB) with a 2 KB answer.
PIPELINED = b"SELECT REPEAT('x', 2000) AS r, '" + b"p" * 3900 + b"' AS pad"
PIPELINED_COUNT = 17_000  # about 66 MiB of commands


@pytest.fixture
async def db(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Db]:
    async with lane_db(tmp_path, template_datadir, cap=2, wait=20) as db:
        yield db


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


@contextmanager
def peak_growth() -> Iterator[list[int]]:
    """How much this process's resident memory rose at most inside the block (the peak is
    reset first: /proc/self/clear_refs 5)."""
    out = [0]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    yield out
    out[0] = status("VmHWM") - base


@contextmanager
def other_core_busy(spin: bool) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if spin else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def read_result(sock: socket.socket) -> list[bytes]:
    """One text result set (CLIENT_DEPRECATE_EOF: no EOF after the columns), its rows; an
    OK or ERR alone as a one-item list."""
    first = recv_packet(sock)[1]
    if first[0] in (0x00, 0xFF):
        return [first]
    for _ in range(first[0]):
        recv_packet(sock)
    rows = []
    while True:
        packet = recv_packet(sock)[1]
        if packet[0] == 0xFE and len(packet) < 9:
            return rows
        rows.append(packet)


def lane_commands(db: Db) -> int:
    return pool(db).metrics()["fast_lane_commands"]


def others_served(db: Db) -> None:
    c = conn(db, read_timeout=10, write_timeout=10)
    try:
        assert q(c, "SELECT 41 + 1")[0][0] == 42
    finally:
        c.close()


def huge_packet_while_running(db: Db, spin: bool) -> tuple[int, int, object]:
    """A parked client's command runs in the lane (2 s) while the client sends a packet that
    claims 16 MiB frames, 80 MiB of garbage in all; a second client is served meanwhile.
    (peak growth, bytes sent, what the first client got after its answer)."""
    other = conn(db, read_timeout=10, write_timeout=10)
    sock = raw_pooled(db)
    sock.settimeout(30)
    sock.sendall(frame(0, b"\x03" + SLOW)[0])
    assert read_result(sock) == [b"\x010"]  # the first time in Python: plain from now on
    before = lane_commands(db)
    sent = [0]
    got: list[object] = []

    def send() -> None:
        chunk = b"\xa5" * MiB
        stalls = 0
        try:
            sock.sendall(b"\xff\xff\xff\x00")  # a frame of 16 MiB - 1, and more after it
            while sent[0] < 80 * MiB and stalls < 3:
                if select.select([], [sock], [], 1)[1]:
                    sent[0] += sock.send(chunk)
                    stalls = 0
                else:
                    stalls += 1  # the proxy is not reading: that is the point
        except OSError:
            pass  # refused and closed

    def receive() -> None:
        for _ in range(2):
            try:
                got.append(read_result(sock))
            except OSError as exc:  # a timeout, a reset, a close
                got.append(type(exc).__name__)
                return

    with peak_growth() as growth:
        sock.sendall(frame(0, b"\x03" + SLOW)[0])  # the lane runs it this time
        threads = [threading.Thread(target=send), threading.Thread(target=receive)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert q(other, "SELECT 1")[0][0] == 1  # served while the first client sends
        for t in threads:
            t.join(60)
    sock.close()
    other.close()
    assert lane_commands(db) > before, "the lane did not run the command"
    assert got[0] == [b"\x010"], got  # the answer to the running command, whole
    return growth[0], sent[0], got[1] if len(got) > 1 else None


@pytest.mark.parametrize("spin", [False, True], ids=["quiet", "other-core-busy"])
async def test_a_huge_packet_sent_while_a_lane_command_runs(db: Db, spin: bool) -> None:
    proxy = db.platform.proxy
    assert proxy is not None
    proxy.pooler.max_packet = MiB  # Python's rule for what it reads holds under the bound too

    def run() -> None:
        with other_core_busy(spin):
            growth, sent, after = huge_packet_while_running(db, spin)
            assert growth < GROWTH_MAX, (growth // MiB, sent // MiB)
            if isinstance(after, list):
                err = parse_err(after[0])
                assert (err.code, err.sqlstate) == (1153, "08S01"), err
            else:
                assert after in ("ConnectionResetError", "BrokenPipeError", "ConnectionError")
            others_served(db)
            m = settled(db)
            assert m["backends_in_use"] == 0 and m["clients"] == 0, m
            assert m["clients_waiting"] == 0, m

    await asyncio.to_thread(run)


def pipelined(db: Db) -> tuple[int, int, int]:
    """PIPELINED_COUNT commands sent without reading an answer for 3 s, then read while the
    rest is sent: (peak growth, commands whose answer came whole, lane commands run)."""
    sock = raw_pooled(db)
    sock.settimeout(30)
    command = frame(0, b"\x03" + PIPELINED)[0]
    sock.sendall(command)
    assert len(read_result(sock)) == 1  # the first time in Python: plain from now on
    before = lane_commands(db)
    failed: list[BaseException] = []

    def send() -> None:
        try:
            for _ in range(PIPELINED_COUNT):
                sock.sendall(command)
        except OSError as exc:
            failed.append(exc)

    answered = 0
    with peak_growth() as growth:
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(3)  # nothing read: the client's commands wait in its socket
        for _ in range(PIPELINED_COUNT):
            rows = read_result(sock)
            if len(rows) == 1 and rows[0][1:].startswith(b"\xd0\x07" + b"x" * 2000):
                answered += 1
        sender.join(30)
    sock.close()
    assert not failed, failed
    return growth[0], answered, lane_commands(db) - before


# With the other core busy only: the harder case, and the quiet one takes as long.
@pytest.mark.parametrize("spin", [True], ids=["other-core-busy"])
async def test_a_client_pipelining_without_reading_waits_in_its_socket(db: Db, spin: bool) -> None:
    def run() -> None:
        with other_core_busy(spin):
            growth, answered, ran = pipelined(db)
            assert growth < GROWTH_MAX, growth // MiB
            assert answered == PIPELINED_COUNT
            assert ran >= PIPELINED_COUNT, ran
            others_served(db)
            m = settled(db)
            assert m["backends_in_use"] == 0 and m["clients"] == 0, m

    await asyncio.to_thread(run)
