"""What /proc tells about a process: whether a pid is still the one we started, and what it
uses (where there is no cgroup to ask)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket as socketlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from selkie.compute.cgroups import CgroupUsage
from selkie.errors import ComputeError


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def process_usage(pid: int) -> CgroupUsage | None:
    """CPU and resident memory of one process, where there is no cgroup to read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return CgroupUsage(
        cpu_seconds=(int(fields[11]) + int(fields[12])) / ticks,
        memory_bytes=rss_pages * os.sysconf("SC_PAGE_SIZE"),
        throttled_periods=0,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socketlib.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socketlib.socket() as s:
        s.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def is_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (SIGSTOP delivered)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


@contextlib.asynccontextmanager
async def held_still(pid: int, timeout: float = 5.0) -> AsyncIterator[None]:
    """SIGSTOP a process (all its threads), wait until the kernel says every thread has
    stopped, and SIGCONT it after the block, whatever happens in it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout
        while not is_stopped(pid):
            if time.monotonic() > deadline:
                raise ComputeError(f"process {pid} did not stop in {timeout:.0f}s")
            await asyncio.sleep(0.0005)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# The search path a server process gets (its own tools: mariadbd runs none of Selkie's).
SERVER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def server_env() -> dict[str, str]:
    """The whole environment of a ``mariadbd`` Selkie starts (a compute, a restore server):
    a search path and the operator's time zone, nothing else. Selkie's own environment
    holds archive keys, tokens and store URLs, which a server that runs tenants' SQL must
    never be able to read (``/proc/self/environ``)."""
    env = {"PATH": SERVER_PATH, "LANG": "C.UTF-8"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def find_mariadbd(configured: str = "") -> str:
    """The server binary: the configured path, else PATH, else /usr/sbin/mariadbd."""
    if configured:
        return configured
    return shutil.which("mariadbd") or "/usr/sbin/mariadbd"


async def wait_for_handshake(socket_path: Path) -> bool:
    """True once the server on ``socket_path`` sends its Handshake v10 (it is ready)."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
    except OSError:
        return False
    try:
        header = await asyncio.wait_for(reader.readexactly(5), timeout=2)
        return header[4] == 10  # protocol version 10; an ERR packet starts with 0xff
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# --- a compute's error log -----------------------------------------------------------------

_NOISE = ("Could not increase number of max_open_files", "proxies_priv")


def _summarize(lines: list[str], count: int) -> str:
    useful = [line for line in lines if line.strip() and not any(n in line for n in _NOISE)]
    return "\n".join(useful[-count:])


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_since(path: Path, offset: int) -> str:
    """The useful lines written to the log after ``offset``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return _summarize(text.splitlines(), 15)


def log_tail(path: Path, lines: int) -> str:
    """The last useful lines of the log."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no error log)"
    return _summarize(text.splitlines(), lines)
