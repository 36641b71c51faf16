"""The local compute driver: each endpoint's compute is a ``mariadbd`` process on this machine.

Layout under ``<data_dir>/computes/<endpoint_id>/``: ``my.cnf`` (rendered at every start),
``compute.json`` (our record: pid, process start time, port, socket), ``mariadbd.pid`` (the
server's own), ``error.log``. The unix socket lives in a short private directory (socket
paths are limited to 107 bytes). Admin access is the server's ``unix_socket``
authentication for the OS user running Selkie: no password exists for it anywhere, and the
socket's directory is mode 0700.

Supervision follows patroni's postmaster handling: a pid is trusted only if its start time
matches the record and its command line names our config; stop is SIGTERM, then SIGKILL of
the whole process group after a timeout; our children are always reaped. The records and
the identity checks are :mod:`selkie.compute.records`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from selkie.compute.base import ComputeDriver, ComputeInfo, ComputeLoad, ComputeSpec
from selkie.compute.cgroups import Cgroups
from selkie.compute.identity import choose
from selkie.compute.live import LiveSizing
from selkie.compute.mariadb import LOOPBACK_HOSTS, Sizing, render_config, run_statements, timeouts
from selkie.compute.procs import (
    find_mariadbd,
    free_port,
    held_still,
    log_since,
    log_size,
    log_tail,
    port_is_free,
    proc_start_time,
    process_usage,
    server_env,
    wait_for_handshake,
)
from selkie.compute.records import Records, Supervised, socket_dir
from selkie.compute.warm import WARM_POOL_BYTES, InputWatch, grow_pool, shrink_pool
from selkie.errors import ComputeError
from selkie.tasks import cancel as cancel_task
from selkie.tasks import spawn

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.5


class LocalDriver(ComputeDriver):
    def __init__(
        self,
        *,
        data_dir: Path,
        mariadbd: str = "",
        bind_address: str = "127.0.0.1",
        cgroups: Cgroups | None = None,
        os_user: str = "",
    ) -> None:
        super().__init__()
        self.root = (data_dir / "computes").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)  # computes pass to their own run directory, never list others
        self.mariadbd = find_mariadbd(mariadbd)
        self.bind_address = bind_address
        # On loopback only this machine's proxy reaches a compute: accounts for it alone
        # (a local user who finds the port cannot try passwords around the proxy's pacing).
        if bind_address in LOOPBACK_HOSTS or bind_address.startswith("127."):
            self.account_hosts = LOOPBACK_HOSTS
        self.cgroups = cgroups or Cgroups(enabled=False)
        self.socket_dir = socket_dir(data_dir.resolve())
        self.records = Records(root=self.root, sockets=self.socket_dir)
        self.os_user = getpass.getuser()
        self.run_as_root = os.geteuid() == 0
        # The unprivileged user computes run as when Selkie is root (None: as Selkie).
        self.identity = choose(data_dir, os_user)
        if self.identity is not None:
            self.identity.hand_over(self.socket_dir)
        self._procs: dict[str, Supervised] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # How long each compute was last held still by paused() (ms), for benchmarks.
        self.last_pause_ms: dict[str, float] = {}
        # Computes this driver froze (warm suspend) and has not thawed.
        self._frozen: set[str] = set()
        self._growing: dict[str, asyncio.Task[None]] = {}
        self._watches: dict[str, InputWatch] = {}

    # --- paths -----------------------------------------------------------------------------

    def run_dir(self, endpoint_id: str) -> Path:
        return self.records.run_dir(endpoint_id)

    def socket_path(self, endpoint_id: str) -> Path:
        return self.records.socket_path(endpoint_id)

    def error_log(self, endpoint_id: str) -> Path:
        return self.records.error_log(endpoint_id)

    def _lock(self, endpoint_id: str) -> asyncio.Lock:
        return self._locks.setdefault(endpoint_id, asyncio.Lock())

    def _info(self, sup: Supervised | None, endpoint_id: str) -> ComputeInfo:
        if sup is None:
            return ComputeInfo(endpoint_id=endpoint_id, running=False)
        return ComputeInfo(
            endpoint_id=endpoint_id,
            running=True,
            host=self.bind_address,
            port=sup.port,
            socket=sup.socket,
            pid=sup.pid,
        )

    # --- start -----------------------------------------------------------------------------

    async def start(self, spec: ComputeSpec, *, timeout: float = 60.0) -> ComputeInfo:
        async with self._lock(spec.endpoint_id):
            sup = self._procs.get(spec.endpoint_id)
            if sup is not None and not sup.exited.is_set():
                return self._info(sup, spec.endpoint_id)
            found = self.records.recorded_alive(spec.endpoint_id)
            if found is not None:
                self._supervise(found)
                return self._info(found, spec.endpoint_id)
            last_error: ComputeError | None = None
            for _attempt in range(3):
                try:
                    sup = await self._spawn(spec, timeout=timeout)
                except _PortTaken as exc:
                    last_error = ComputeError(str(exc))
                    spec = _without_port_hint(spec)
                    continue
                return self._info(sup, spec.endpoint_id)
            assert last_error is not None
            raise last_error

    async def _spawn(self, spec: ComputeSpec, *, timeout: float) -> Supervised:
        ep = spec.endpoint_id
        run_dir = self.run_dir(ep)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (spec.datadir / "mysql").is_dir():
            raise ComputeError(f"datadir {spec.datadir} of endpoint {ep} is not initialised")
        port = spec.port_hint if spec.port_hint and port_is_free(spec.port_hint) else free_port()
        sock = self.socket_path(ep)
        pid_file = run_dir / "mariadbd.pid"
        for stale in (sock, pid_file):
            stale.unlink(missing_ok=True)
        sizing = Sizing.for_cu(spec.cu)
        tmpdir = run_dir / "tmp"
        tmpdir.mkdir(exist_ok=True)
        if self.identity is not None:
            # Copies, restores and backups are made as root: the compute gets its files.
            await asyncio.to_thread(self.identity.hand_over, spec.datadir, run_dir)
        self.records.cnf_path(ep).write_text(
            render_config(
                sizing=sizing,
                datadir=spec.datadir,
                socket=sock,
                port=port,
                pid_file=pid_file,
                error_log=self.error_log(ep),
                bind_address=self.bind_address,
                run_as_root=self.run_as_root,
                os_user=self.identity.name if self.identity is not None else None,
                extra={"tmpdir": str(tmpdir), **spec.server_options},
            )
        )
        log_offset = self._log_size(ep)
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                spec.binary or self.mariadbd,
                f"--defaults-file={self.records.cnf_path(ep)}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killpg reaches all of it
                env=server_env(),
            )
        except OSError as exc:
            raise ComputeError(
                f"cannot run {spec.binary or self.mariadbd}: {exc.strerror}"
            ) from exc
        start_time = proc_start_time(process.pid) or 0
        sup = Supervised(
            endpoint_id=ep,
            pid=process.pid,
            start_time=start_time,
            port=port,
            socket=sock,
            process=process,
            cu=spec.cu,
        )
        sup.boosted = spec.boost and self.cgroups.apply(
            ep, process.pid, cu=spec.cu, memory_bytes=sizing.memory_bytes, boost=spec.boost
        )
        self.records.write(sup)
        try:
            await self._wait_ready(sup, deadline=started + timeout)
        except BaseException:
            sup.stopping = True
            await self._kill_and_reap(sup)
            self.records.forget(ep)
            tail = self._log_since(ep, log_offset)
            if "Address already in use" in tail or "Can't start server: Bind" in tail:
                raise _PortTaken(f"port {port} was taken: {tail}") from None
            raise
        self._supervise(sup)
        log.info(
            "compute %s started (pid %d, port %d) in %.0f ms",
            ep,
            sup.pid,
            port,
            (time.monotonic() - started) * 1000,
        )
        return sup

    async def _wait_ready(self, sup: Supervised, *, deadline: float) -> None:
        assert sup.process is not None
        delay = 0.002
        offset = self._log_size(sup.endpoint_id)
        while True:
            if sup.process.returncode is not None:
                raise ComputeError(
                    f"mariadbd for {sup.endpoint_id} exited with status "
                    f"{sup.process.returncode} while starting: "
                    f"{self.error_log_tail(sup.endpoint_id)}"
                )
            if sup.socket.exists() and await wait_for_handshake(sup.socket):
                return
            if time.monotonic() > deadline:
                tail = self._log_since(sup.endpoint_id, offset) or self.error_log_tail(
                    sup.endpoint_id
                )
                raise ComputeError(f"mariadbd for {sup.endpoint_id} was not ready in time: {tail}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.005)

    # --- supervision -----------------------------------------------------------------------

    def _supervise(self, sup: Supervised) -> None:
        self._procs[sup.endpoint_id] = sup
        sup.watcher = asyncio.get_running_loop().create_task(
            self._watch(sup), name=f"watch-{sup.endpoint_id}"
        )

    async def _watch(self, sup: Supervised) -> None:
        try:
            if sup.process is not None:
                code: int | None = await sup.process.wait()
            else:
                while self.records.is_ours(sup.pid, sup.endpoint_id, sup.start_time):
                    await asyncio.sleep(_POLL_INTERVAL)
                code = None
        except asyncio.CancelledError:
            raise
        sup.exited.set()
        if self._procs.get(sup.endpoint_id) is sup:
            del self._procs[sup.endpoint_id]
            # Our copies of its sockets would keep its clients' connections open.
            self._unwatch(sup.endpoint_id)
            self._frozen.discard(sup.endpoint_id)
        if sup.stopping:
            return
        status = f"status {code}" if code is not None else "an unknown status"
        if code is not None and code < 0:
            status = f"signal {signal.Signals(-code).name}"
        reason = f"mariadbd exited unexpectedly ({status}): {self.error_log_tail(sup.endpoint_id)}"
        log.warning("compute %s: %s", sup.endpoint_id, reason)
        self.records.forget(sup.endpoint_id)
        try:
            await self._report_exit(sup.endpoint_id, reason)
        except Exception:
            log.exception("exit callback for %s failed", sup.endpoint_id)

    async def adopt(self, endpoint_id: str) -> ComputeInfo:
        async with self._lock(endpoint_id):
            sup = self._procs.get(endpoint_id)
            if sup is None:
                sup = self.records.recorded_alive(endpoint_id)
                if sup is None:
                    return ComputeInfo(endpoint_id=endpoint_id, running=False)
                # Adopted computes are active ones: none may stay frozen.
                self.cgroups.thaw(endpoint_id)
                self._supervise(sup)
            return self._info(sup, endpoint_id)

    # --- stop ------------------------------------------------------------------------------

    async def stop(self, endpoint_id: str, *, timeout: float = 30.0) -> None:
        async with self._lock(endpoint_id):
            sup = self._procs.get(endpoint_id) or self.records.recorded_alive(endpoint_id)
            if sup is None:
                # No record: a process whose record was lost may still be there.
                pid = self.records.scan_proc().get(endpoint_id)
                if pid is None:
                    self.records.forget(endpoint_id)
                    return
                sup = Supervised(
                    endpoint_id=endpoint_id,
                    pid=pid,
                    start_time=proc_start_time(pid) or 0,
                    port=0,
                    socket=self.socket_path(endpoint_id),
                )
            sup.stopping = True
            started = time.monotonic()
            # A frozen process takes no signal until thawed (a v1 freezer holds even SIGKILL).
            self._unwatch(endpoint_id)
            self._frozen.discard(endpoint_id)
            self.cgroups.thaw(endpoint_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(sup.pid, signal.SIGTERM)
            if not await self._wait_gone(sup, timeout):
                log.warning(
                    "compute %s ignored SIGTERM for %.0fs; killing it", endpoint_id, timeout
                )
                await self._kill_and_reap(sup)
            if sup.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await sup.watcher
            self._procs.pop(endpoint_id, None)
            self.records.forget(endpoint_id)
            self.cgroups.remove(endpoint_id)
            log.info(
                "compute %s stopped in %.0f ms", endpoint_id, (time.monotonic() - started) * 1000
            )

    async def _wait_gone(self, sup: Supervised, timeout: float) -> bool:
        if sup.process is not None:
            try:
                await asyncio.wait_for(asyncio.shield(sup.process.wait()), timeout)
                return True
            except TimeoutError:
                return False
        deadline = time.monotonic() + timeout
        while self.records.is_ours(sup.pid, sup.endpoint_id, sup.start_time or None):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _kill_and_reap(self, sup: Supervised) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sup.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(sup.pid, signal.SIGKILL)
        if sup.process is not None:
            await sup.process.wait()
        else:
            while self.records.is_ours(sup.pid, sup.endpoint_id, sup.start_time or None):
                await asyncio.sleep(0.01)

    # --- live size -------------------------------------------------------------------------

    supports_resize = True
    supports_pause = True

    @contextlib.asynccontextmanager
    async def paused(self, endpoint_id: str) -> AsyncIterator[None]:
        t0 = time.monotonic()
        try:
            if endpoint_id in self._frozen:
                yield  # frozen: already still
                return
            async with held_still(self._running(endpoint_id).pid):
                yield
        finally:
            self.last_pause_ms[endpoint_id] = (time.monotonic() - t0) * 1000

    @property
    def live(self) -> LiveSizing:
        return LiveSizing(self.cgroups, self.execute)

    def _running(self, endpoint_id: str) -> Supervised:
        sup = self._procs.get(endpoint_id)
        if sup is None or sup.exited.is_set():
            raise ComputeError(f"compute {endpoint_id} is not running")
        return sup

    async def end_boost(self, endpoint_id: str) -> None:
        async with self._lock(endpoint_id):
            sup = self._procs.get(endpoint_id)
            if sup is None or not sup.boosted:
                return
            try:
                self.cgroups.set_cpu(endpoint_id, sup.cu)
            except OSError as exc:
                raise ComputeError(f"cannot set the CPU limit: {exc.strerror}") from exc
            sup.boosted = False
            self.records.write(sup)

    async def resize(self, endpoint_id: str, cu: float) -> None:
        async with self._lock(endpoint_id):
            sup = self._running(endpoint_id)
            if sup.cu == cu:
                return
            await self.live.resize(endpoint_id, sup.cu or cu, cu, boosted=sup.boosted, pid=sup.pid)
            sup.cu = cu
            self.records.write(sup)
            log.info("compute %s resized to %s CU", endpoint_id, cu)

    async def load(self, endpoint_id: str) -> ComputeLoad | None:
        sup = self._procs.get(endpoint_id)
        if sup is None or sup.exited.is_set() or endpoint_id in self._frozen:
            return None
        return await self.live.load(endpoint_id, sup.pid, sup.cu)

    # --- warm suspend ----------------------------------------------------------------------

    @property
    def supports_freeze(self) -> bool:  # type: ignore[override]
        return self.cgroups.can_freeze

    async def freeze(self, endpoint_id: str) -> None:
        async with self._lock(endpoint_id):
            sup = self._running(endpoint_id)
            if endpoint_id in self._frozen:
                return
            if not self.cgroups.holds(endpoint_id, sup.pid):
                raise ComputeError(f"compute {endpoint_id} is not in a freezable cgroup")
            await cancel_task(self._growing.pop(endpoint_id, None))
            await shrink_pool(self.execute, endpoint_id, to_bytes=WARM_POOL_BYTES)
            try:
                await asyncio.to_thread(self.cgroups.freeze, endpoint_id)
            except OSError as exc:
                raise ComputeError(f"cannot freeze compute {endpoint_id}: {exc}") from exc
            self._frozen.add(endpoint_id)
            self._watch_input(endpoint_id, sup.pid)
            log.info("compute %s frozen", endpoint_id)

    async def thaw(self, endpoint_id: str, *, cu: float) -> ComputeInfo | None:
        async with self._lock(endpoint_id):
            sup = self._procs.get(endpoint_id)
            if sup is None or sup.exited.is_set():
                self._frozen.discard(endpoint_id)
                return None
            self._unwatch(endpoint_id)
            self.cgroups.thaw(endpoint_id)
            self._frozen.discard(endpoint_id)
            if cu != sup.cu:
                with contextlib.suppress(OSError):
                    self.cgroups.set_memory(endpoint_id, Sizing.for_cu(cu).memory_bytes)
                    self.cgroups.set_cpu(endpoint_id, cu)
                sup.cu = cu
                self.records.write(sup)
            self._growing[endpoint_id] = spawn(
                grow_pool(self.execute, endpoint_id, to_bytes=Sizing.for_cu(cu).buffer_pool_bytes),
                name=f"grow-pool-{endpoint_id}",
            )
            return self._info(sup, endpoint_id)

    def is_frozen(self, endpoint_id: str) -> bool:
        return endpoint_id in self._frozen

    def memory(self, endpoint_id: str) -> int | None:
        usage = self.cgroups.usage(endpoint_id)
        if usage is None:
            sup = self._procs.get(endpoint_id)
            usage = process_usage(sup.pid) if sup is not None else None
        return usage.memory_bytes if usage is not None else None

    def _watch_input(self, endpoint_id: str, pid: int) -> None:
        def waiting() -> None:
            self._watches.pop(endpoint_id, None)
            for callback in self._waiting_callbacks:
                callback(endpoint_id)

        watch = InputWatch(pid, waiting)
        try:
            watch.start()
        except OSError as exc:
            log.warning(
                "compute %s: cannot watch its sockets while frozen (%s): sessions open on it "
                "wait until it goes cold",
                endpoint_id,
                exc,
            )
            return
        self._watches[endpoint_id] = watch

    def _unwatch(self, endpoint_id: str) -> None:
        watch = self._watches.pop(endpoint_id, None)
        if watch is not None:
            watch.close()

    # --- observation -----------------------------------------------------------------------

    async def disk_free(self, endpoint_id: str) -> int | None:
        return await asyncio.to_thread(self._disk_free, endpoint_id)

    def _disk_free(self, endpoint_id: str) -> int | None:
        # The datadir its my.cnf names: also right for a compute adopted after a restart.
        try:
            lines = self.records.cnf_path(endpoint_id).read_text().splitlines()
            datadir = next(v for k, _, v in (x.partition("=") for x in lines) if k == "datadir")
            st = os.statvfs(datadir)
        except (OSError, StopIteration):
            return None
        return st.f_bavail * st.f_frsize

    async def inspect(self, endpoint_id: str) -> ComputeInfo:
        sup = self._procs.get(endpoint_id)
        if sup is not None and not sup.exited.is_set():
            return self._info(sup, endpoint_id)
        return self._info(self.records.recorded_alive(endpoint_id), endpoint_id)

    async def list_computes(self) -> list[ComputeInfo]:
        infos: dict[str, ComputeInfo] = {}
        for rec_dir in self.root.iterdir():
            if rec_dir.is_dir():
                infos[rec_dir.name] = await self.inspect(rec_dir.name)
        for endpoint_id, pid in (await asyncio.to_thread(self.records.scan_proc)).items():
            if not infos.get(endpoint_id, ComputeInfo(endpoint_id="", running=False)).running:
                infos[endpoint_id] = ComputeInfo(endpoint_id=endpoint_id, running=True, pid=pid)
        return list(infos.values())

    async def execute(
        self, endpoint_id: str, statements: Sequence[str], *, timeout: float | None = None
    ) -> list[list[tuple[Any, ...]]]:
        if endpoint_id in self._frozen:
            # It would never answer: callers (meter, safekeeper checks) try again later.
            raise ComputeError(f"compute {endpoint_id} is frozen (warm suspended)")
        self.note_admin_statements(endpoint_id, len(statements))
        return await asyncio.to_thread(
            run_statements,
            endpoint_id,
            statements,
            unix_socket=str(self.socket_path(endpoint_id)),
            user=self.os_user,
            # A private unix socket: no TLS (PyMySQL would otherwise build an SSL context,
            # loading the system's certificates, for every connection).
            ssl_disabled=True,
            **timeouts(timeout),
        )

    async def remove(self, endpoint_id: str) -> None:
        if (await self.inspect(endpoint_id)).running:
            raise ComputeError(f"compute {endpoint_id} is still running")
        await asyncio.to_thread(shutil.rmtree, self.run_dir(endpoint_id), True)
        self.socket_path(endpoint_id).unlink(missing_ok=True)
        self._locks.pop(endpoint_id, None)

    def _log_size(self, endpoint_id: str) -> int:
        return log_size(self.error_log(endpoint_id))

    def _log_since(self, endpoint_id: str, offset: int) -> str:
        return log_since(self.error_log(endpoint_id), offset)

    def error_log_tail(self, endpoint_id: str, *, lines: int = 15) -> str:
        return log_tail(self.error_log(endpoint_id), lines)

    async def close(self) -> None:
        for task in list(self._growing.values()):
            await cancel_task(task)
        self._growing.clear()
        for endpoint_id in list(self._watches):
            self._unwatch(endpoint_id)
        for sup in list(self._procs.values()):
            if sup.watcher is not None:
                sup.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sup.watcher
        self._procs.clear()


class _PortTaken(ComputeError):
    pass


def _without_port_hint(spec: ComputeSpec) -> ComputeSpec:
    from dataclasses import replace

    return replace(spec, port_hint=None)


__all__ = ["LocalDriver", "find_mariadbd", "wait_for_handshake"]
