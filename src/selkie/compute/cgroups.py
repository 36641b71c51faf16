"""Per-compute CPU and memory limits through cgroups (v2, or the v1 controllers the host
mounts). Best effort by design: where the hierarchy is not writable (an unprivileged
container, say) Selkie logs one warning and runs computes without limits."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


def _own_path(controller: str) -> str:
    """This process's cgroup path for a v1 controller ('' for the v2 unified hierarchy)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (controller and controller in controllers.split(",")) or (
                not controller and not controllers
            ):
                return path.lstrip("/")
    except OSError:
        pass
    return ""


class Cgroups:
    """Creates ``selkie/<endpoint_id>`` groups beside this process's own cgroup."""

    def __init__(self, *, root: Path = CGROUP_ROOT, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled
        self._warned = False
        self.mode = self._detect() if enabled else "off"

    def _detect(self) -> str:
        if (self.root / "cgroup.controllers").exists():
            return "v2"
        if (self.root / "memory").is_dir() and (self.root / "cpu").is_dir():
            return "v1"
        return "off"

    def _dirs(self, endpoint_id: str) -> list[tuple[str, Path]]:
        if self.mode == "v2":
            base = self.root / _own_path("")
            return [("", base / "selkie" / endpoint_id)]
        if self.mode == "v1":
            return [
                (c, self.root / c / _own_path(c) / "selkie" / endpoint_id)
                for c in ("cpu", "memory")
            ]
        return []

    def _warn(self, why: str) -> None:
        if not self._warned:
            log.warning("compute CPU/memory limits are off: %s", why)
            self._warned = True

    def apply(self, endpoint_id: str, pid: int, *, cu: float, memory_bytes: int) -> bool:
        """Put ``pid`` into the endpoint's group with limits from its size. False if the host
        does not let us (logged once)."""
        if self.mode == "off":
            self._warn("no cgroup hierarchy found" if self.enabled else "disabled by settings")
            return False
        quota = max(1000, int(cu * CPU_PERIOD_US))
        try:
            for controller, path in self._dirs(endpoint_id):
                path.mkdir(parents=True, exist_ok=True)
                if self.mode == "v2":
                    parent = path.parent
                    (parent / "cgroup.subtree_control").write_text("+cpu +memory")
                    (path / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
                    (path / "memory.max").write_text(str(memory_bytes))
                elif controller == "cpu":
                    (path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                    (path / "cpu.cfs_quota_us").write_text(str(quota))
                else:
                    (path / "memory.limit_in_bytes").write_text(str(memory_bytes))
                (path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            self._warn(f"{exc.filename}: {exc.strerror}")
            return False
        return True

    def remove(self, endpoint_id: str) -> None:
        for _, path in self._dirs(endpoint_id):
            # Fails harmlessly if it never existed or still holds a process.
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def limits(self, endpoint_id: str) -> dict[str, str]:
        """The limits in force, as the kernel reports them (for tests and diagnostics)."""
        found: dict[str, str] = {}
        for controller, path in self._dirs(endpoint_id):
            names = (
                ["cpu.max", "memory.max"]
                if self.mode == "v2"
                else (["cpu.cfs_quota_us"] if controller == "cpu" else ["memory.limit_in_bytes"])
            )
            for name in names:
                with contextlib.suppress(OSError):
                    found[name] = (path / name).read_text().strip()
        return found
