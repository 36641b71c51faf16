"""What the local driver keeps of each compute on disk, and how it recognises its own
processes: the run directory's paths, ``compute.json`` (pid, process start time, port,
socket, size), and the checks that a pid is still the mariadbd it started (a recycled pid
is never mistaken for a compute)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selkie.compute.procs import is_zombie, proc_cmdline, proc_start_time

_SOCKET_PATH_MAX = 100


@dataclass
class Supervised:
    """A compute process the driver watches (started by it, or adopted from a record)."""

    endpoint_id: str
    pid: int
    start_time: int
    port: int
    socket: Path
    process: asyncio.subprocess.Process | None = None  # None when adopted
    cu: float = 0.0  # the size it runs at (0: unknown, a record from an older version)
    boosted: bool = False  # started without its CPU limit, which end_boost() sets
    stopping: bool = False
    watcher: asyncio.Task[None] | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)


def socket_dir(data_dir: Path) -> Path:
    """A private directory for the computes' unix sockets, short enough for their paths
    (limited to 107 bytes): under the data dir when it is short, else under /tmp."""
    preferred = data_dir / "run"
    if len(str(preferred)) + 40 <= _SOCKET_PATH_MAX:
        path = preferred
    else:
        digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]  # noqa: S324
        path = Path("/tmp") / f"selkie-{digest}"  # noqa: S108 - private, mode 0700
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class Records:
    """The computes' run directories under ``root`` and their sockets in ``sockets``."""

    def __init__(self, *, root: Path, sockets: Path) -> None:
        self.root = root
        self.sockets = sockets

    # --- paths -----------------------------------------------------------------------------

    def run_dir(self, endpoint_id: str) -> Path:
        return self.root / endpoint_id

    def socket_path(self, endpoint_id: str) -> Path:
        return self.sockets / f"{endpoint_id}.sock"

    def record_path(self, endpoint_id: str) -> Path:
        return self.run_dir(endpoint_id) / "compute.json"

    def cnf_path(self, endpoint_id: str) -> Path:
        return self.run_dir(endpoint_id) / "my.cnf"

    def error_log(self, endpoint_id: str) -> Path:
        return self.run_dir(endpoint_id) / "error.log"

    # --- records ---------------------------------------------------------------------------

    def read(self, endpoint_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.record_path(endpoint_id).read_text())
            return data
        except (OSError, ValueError):
            return None

    def write(self, sup: Supervised) -> None:
        path = self.record_path(sup.endpoint_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "endpoint_id": sup.endpoint_id,
                    "pid": sup.pid,
                    "start_time": sup.start_time,
                    "port": sup.port,
                    "socket": str(sup.socket),
                    "cu": sup.cu,
                    "boosted": sup.boosted,
                }
            )
        )
        tmp.replace(path)

    def forget(self, endpoint_id: str) -> None:
        self.record_path(endpoint_id).unlink(missing_ok=True)

    def is_ours(self, pid: int, endpoint_id: str, start_time: int | None = None) -> bool:
        """The pid is alive, is the mariadbd we started for this endpoint, and (when known)
        started when our record says: a recycled pid is never mistaken for a compute."""
        actual = proc_start_time(pid)
        if actual is None or is_zombie(pid):
            return False
        if start_time is not None and actual != start_time:
            return False
        return f"--defaults-file={self.cnf_path(endpoint_id)}" in proc_cmdline(pid)

    def recorded_alive(self, endpoint_id: str) -> Supervised | None:
        """The compute its record names, when that process is still ours and alive."""
        rec = self.read(endpoint_id)
        if rec is None or not self.is_ours(int(rec["pid"]), endpoint_id, rec.get("start_time")):
            return None
        return Supervised(
            endpoint_id=endpoint_id,
            pid=int(rec["pid"]),
            start_time=int(rec["start_time"]),
            port=int(rec["port"]),
            socket=Path(rec["socket"]),
            cu=float(rec.get("cu", 0.0)),
            boosted=bool(rec.get("boosted", False)),
        )

    def scan_proc(self) -> dict[str, int]:
        """mariadbd processes started with a config under our root, by endpoint id. Catches
        a compute whose record was never written (a crash right after spawning it)."""
        found: dict[str, int] = {}
        prefix = f"--defaults-file={self.root}/"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            for arg in proc_cmdline(int(entry.name)):
                if arg.startswith(prefix) and arg.endswith("/my.cnf"):
                    endpoint_id = arg[len(prefix) :].split("/", 1)[0]
                    if not is_zombie(int(entry.name)):
                        found[endpoint_id] = int(entry.name)
        return found
