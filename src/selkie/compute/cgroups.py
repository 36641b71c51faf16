"""Per-compute CPU and memory limits through cgroups (v2, or the v1 controllers the host
mounts), and the freezer that holds a warm-suspended compute still. Best effort by design:
where the hierarchy is not writable (an unprivileged container, say) Selkie logs one warning
and runs computes without limits; without a freezer, suspends are cold.

Limits change live (autoscaling, the startup boost): the CPU quota takes effect at the next
scheduler period; a lower memory limit is written only after the caller has made the
compute give the memory back (the kernel would otherwise reclaim or kill)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
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


def cpu_quota_us(cu: float) -> int:
    """Microseconds of CPU per period for a size (1 CU = one core)."""
    return max(1000, int(cu * CPU_PERIOD_US))


@dataclass(frozen=True)
class CgroupUsage:
    """One reading of a compute's group: CPU used since it was made, and its memory."""

    cpu_seconds: float
    # Anonymous memory (the server's own allocations: buffer pool, connections), without
    # the page cache the kernel can drop at will.
    memory_bytes: int
    # Periods in which the group used all its quota (cgroup's own counter).
    throttled_periods: int


def _stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


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

    def _dirs(self, endpoint_id: str) -> dict[str, Path]:
        """The group's directory per controller ('' for v2's one directory)."""
        if self.mode == "v2":
            return {"": self.root / _own_path("") / "selkie" / endpoint_id}
        if self.mode == "v1":
            controllers = ["cpu", "memory"]
            if (self.root / "cpuacct").is_dir():
                controllers.append("cpuacct")
            if (self.root / "freezer").is_dir():
                controllers.append("freezer")
            return {c: self.root / c / _own_path(c) / "selkie" / endpoint_id for c in controllers}
        return {}

    def _warn(self, why: str) -> None:
        if not self._warned:
            log.warning("compute CPU/memory limits are off: %s", why)
            self._warned = True

    def apply(
        self, endpoint_id: str, pid: int, *, cu: float, memory_bytes: int, boost: bool = False
    ) -> bool:
        """Put ``pid`` into the endpoint's group with limits from its size (with ``boost``,
        no CPU limit yet: :meth:`set_cpu` sets it). False if the host does not let us
        (logged once)."""
        if self.mode == "off":
            self._warn("no cgroup hierarchy found" if self.enabled else "disabled by settings")
            return False
        try:
            for controller, path in self._dirs(endpoint_id).items():
                path.mkdir(parents=True, exist_ok=True)
                if self.mode == "v2":
                    (path.parent / "cgroup.subtree_control").write_text("+cpu +memory")
                elif controller == "cpu":
                    (path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            self._write_cpu(endpoint_id, None if boost else cu)
            self.set_memory(endpoint_id, memory_bytes)
            for controller, path in self._dirs(endpoint_id).items():
                if controller != "freezer":
                    (path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            self._warn(f"{exc.filename}: {exc.strerror}")
            return False
        freezer = self._dirs(endpoint_id).get("freezer")
        if freezer is not None:
            try:
                (freezer / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                # Limits work; only warm suspend is off for this compute (it suspends cold).
                log.warning("compute %s cannot be frozen: %s", endpoint_id, exc.strerror)
        return True

    def _write_cpu(self, endpoint_id: str, cu: float | None) -> None:
        dirs = self._dirs(endpoint_id)
        if self.mode == "v2":
            quota = "max" if cu is None else str(cpu_quota_us(cu))
            (dirs[""] / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        elif self.mode == "v1":
            quota = "-1" if cu is None else str(cpu_quota_us(cu))
            (dirs["cpu"] / "cpu.cfs_quota_us").write_text(quota)

    def set_cpu(self, endpoint_id: str, cu: float | None) -> None:
        """The group's CPU quota for ``cu`` (None: unlimited). Raises OSError."""
        self._write_cpu(endpoint_id, cu)

    def set_memory(self, endpoint_id: str, memory_bytes: int) -> None:
        """The group's memory limit. Raises OSError (v1 says EBUSY when the group holds
        more than the new limit and the kernel cannot reclaim it)."""
        dirs = self._dirs(endpoint_id)
        if self.mode == "v2":
            (dirs[""] / "memory.max").write_text(str(memory_bytes))
        elif self.mode == "v1":
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))

    def usage(self, endpoint_id: str) -> CgroupUsage | None:
        """The group's CPU and memory now; None where there is no group to read."""
        dirs = self._dirs(endpoint_id)
        try:
            if self.mode == "v2":
                cpu = _stat(dirs[""] / "cpu.stat")
                memory = _stat(dirs[""] / "memory.stat")
                return CgroupUsage(
                    cpu_seconds=cpu["usage_usec"] / 1e6,
                    memory_bytes=memory.get("anon", 0),
                    throttled_periods=cpu.get("nr_throttled", 0),
                )
            if self.mode == "v1" and "cpuacct" in dirs:
                used_ns = int((dirs["cpuacct"] / "cpuacct.usage").read_text())
                memory = _stat(dirs["memory"] / "memory.stat")
                return CgroupUsage(
                    cpu_seconds=used_ns / 1e9,
                    memory_bytes=memory.get("rss", 0),
                    throttled_periods=_stat(dirs["cpu"] / "cpu.stat").get("nr_throttled", 0),
                )
        except (OSError, KeyError, ValueError):
            return None
        return None

    # --- the freezer (warm suspend) --------------------------------------------------------

    @property
    def can_freeze(self) -> bool:
        """Whether computes can be frozen here (v2's cgroup.freeze, or v1's freezer)."""
        return self.mode == "v2" or (self.mode == "v1" and (self.root / "freezer").is_dir())

    def _freeze_file(self, endpoint_id: str) -> Path | None:
        dirs = self._dirs(endpoint_id)
        if self.mode == "v2":
            return dirs[""] / "cgroup.freeze"
        if "freezer" in dirs:
            return dirs["freezer"] / "freezer.state"
        return None

    def holds(self, endpoint_id: str, pid: int) -> bool:
        """Whether ``pid`` is in the endpoint's freezable group (so freeze() reaches it)."""
        path = self._freeze_file(endpoint_id)
        if path is None:
            return False
        try:
            procs = (path.parent / "cgroup.procs").read_text().split()
        except OSError:
            return False
        return str(pid) in procs

    def is_frozen(self, endpoint_id: str) -> bool:
        """Whether the group is frozen, or on its way there (the kernel's word)."""
        path = self._freeze_file(endpoint_id)
        try:
            if path is None:
                return False
            if self.mode == "v2":
                return path.read_text().strip() == "1"
            return path.read_text().strip() in ("FROZEN", "FREEZING")
        except OSError:
            return False

    def _settled(self, path: Path) -> bool:
        if self.mode == "v2":
            return "frozen 1" in (path.parent / "cgroup.events").read_text()
        return path.read_text().strip() == "FROZEN"

    def freeze(self, endpoint_id: str, *, timeout: float = 5.0) -> None:
        """Freeze every task of the group and return once the kernel says all are frozen
        (they use no CPU; their memory stays). Raises OSError; thaws again on a timeout."""
        path = self._freeze_file(endpoint_id)
        if path is None:
            raise OSError(f"no freezer for {endpoint_id}")
        path.write_text("1" if self.mode == "v2" else "FROZEN")
        deadline = time.monotonic() + timeout
        while not self._settled(path):
            if time.monotonic() > deadline:
                self.thaw(endpoint_id)
                raise OSError(f"compute {endpoint_id} did not freeze in {timeout:.0f}s")
            # v1 retries tasks that were busy in the kernel only when asked again.
            if self.mode == "v1":
                path.write_text("FROZEN")
            time.sleep(0.0005)

    def thaw(self, endpoint_id: str) -> bool:
        """Let the group run again; True if it was frozen. Idempotent."""
        path = self._freeze_file(endpoint_id)
        if path is None or not self.is_frozen(endpoint_id):
            return False
        path.write_text("0" if self.mode == "v2" else "THAWED")
        return True

    def frozen_groups(self) -> list[str]:
        """Endpoint ids whose group is frozen (for the reconciler after a crash)."""
        probe = self._dirs("x")
        base = probe.get("") if self.mode == "v2" else probe.get("freezer")
        if base is None:
            return []
        try:
            names = [p.name for p in base.parent.iterdir() if p.is_dir()]
        except OSError:
            return []
        return sorted(n for n in names if self.is_frozen(n))

    def remove(self, endpoint_id: str) -> None:
        for path in self._dirs(endpoint_id).values():
            # Fails harmlessly if it never existed or still holds a process.
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def limits(self, endpoint_id: str) -> dict[str, str]:
        """The limits in force, as the kernel reports them (for tests and diagnostics)."""
        names = {
            "": ["cpu.max", "memory.max"],
            "cpu": ["cpu.cfs_quota_us"],
            "memory": ["memory.limit_in_bytes"],
        }
        found: dict[str, str] = {}
        for controller, path in self._dirs(endpoint_id).items():
            for name in names.get(controller, []):
                with contextlib.suppress(OSError):
                    found[name] = (path / name).read_text().strip()
        return found
