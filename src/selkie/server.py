"""The whole platform in one process, on one asyncio event loop (`selkie up`).

:class:`Platform` wires the parts together: state store, control-plane services, compute
and storage drivers, the lifecycle manager, the operations runner and the reconciler. Tests
and benchmarks use it directly; `selkie up` adds the HTTP server around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import shlex
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import uvicorn

from selkie.api.app import create_app
from selkie.archive import open_archive
from selkie.compute.base import ComputeDriver
from selkie.compute.cgroups import Cgroups
from selkie.compute.local import LocalDriver
from selkie.config import Settings, split_listen
from selkie.control import Control
from selkie.control.access import LocalControlPlane
from selkie.control.bootstrap import FirstStart, first_start
from selkie.control.history import Durable, History
from selkie.control.lifecycle import Lifecycle
from selkie.control.reconciler import reconcile
from selkie.control.restores import Restorer
from selkie.control.runner import OperationsRunner
from selkie.control.scheduler import Scheduler
from selkie.controlplane import ControlPlane
from selkie.errors import Conflict
from selkie.metering.meter import Meter
from selkie.metering.prometheus import Sources, render
from selkie.model import Durability
from selkie.proxy.server import ProxyConfig, ProxyServer
from selkie.proxy.tls import server_context
from selkie.remote import HttpControlPlane
from selkie.safekeeper.service import Safekeeper
from selkie.storage.base import StorageDriver
from selkie.storage.local import LocalStorage
from selkie.storage.restore import Tools
from selkie.store import Store
from selkie.store.tables import BranchRow

log = logging.getLogger(__name__)


def _history(
    settings: Settings, store: Store, driver: ComputeDriver, storage: StorageDriver
) -> History | None:
    """Durable storage of local branches: the archive, the safekeeper, and the history
    service over them (None with the archive off, or computes in Kubernetes)."""
    if not settings.archive_enabled or not isinstance(storage, LocalStorage):
        return None
    archive = open_archive(
        settings.effective_archive_url,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        session_token=settings.s3_session_token,
    )
    user = getpass.getuser()
    return History(
        store=store,
        settings=settings,
        archive=archive,
        safekeeper=Safekeeper(
            root=settings.effective_safekeeper_dir,
            archive=archive,
            user=user,
            note_statements=driver.note_admin_statements,
        ),
        storage=storage,
        driver=driver,
        tools=Tools(mariadbd=settings.mariadbd, user=user),
    )


def _computes(settings: Settings, store: Store) -> tuple[ComputeDriver, StorageDriver]:
    """The compute driver and branch storage the settings ask for."""
    if settings.compute_driver == "kubernetes":
        from selkie.compute.kubernetes import KubernetesDriver, KubernetesStorage, KubeSettings

        namespace = settings.kubernetes_namespace
        if not namespace:
            own = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            namespace = own.read_text().strip() if own.exists() else "default"
        driver = KubernetesDriver(
            KubeSettings(
                namespace=namespace,
                kubeconfig=settings.kubernetes_kubeconfig,
                image=settings.kubernetes_image,
                pageserver_image=settings.kubernetes_pageserver_image,
                storage_class=settings.kubernetes_storage_class,
                storage_size=settings.kubernetes_storage_size,
                stop_grace_seconds=max(1, int(settings.compute_stop_timeout)),
            )
        )

        def project_of(branch_id: str) -> str:
            with store.read() as s:
                row = s.get(BranchRow, branch_id)
                return row.project_id if row is not None else ""

        return driver, KubernetesStorage(driver, project_of=project_of)
    local = LocalDriver(
        data_dir=settings.data_dir,
        mariadbd=settings.mariadbd,
        bind_address=settings.compute_bind_address,
        cgroups=Cgroups(enabled=settings.compute_cgroups),
    )
    return local, LocalStorage(data_dir=settings.data_dir)


@dataclass
class LeaderWork:
    """What the scheduler's leader does besides suspending: metering, and (when control
    planes share the store) settling what a control plane that died left half-done."""

    store: Store
    lifecycle: Lifecycle
    meter: Meter
    history: History | None = None
    reconcile_every: float = 30.0
    _last_reconcile: datetime | None = None

    async def tick(self, now: datetime) -> None:
        await self.meter.tick(now)
        if self.history is not None:
            await self.history.tick(now)
        if not self.store.shared:
            return  # the only control plane on its store: it reconciled when it started
        last = self._last_reconcile
        if last is None or (now - last).total_seconds() >= self.reconcile_every:
            self._last_reconcile = now
            await reconcile(self.store, self.lifecycle, shared=True)


@dataclass
class Platform:
    settings: Settings
    store: Store
    control: Control
    driver: ComputeDriver
    storage: StorageDriver
    lifecycle: Lifecycle
    runner: OperationsRunner
    access: LocalControlPlane
    scheduler: Scheduler
    meter: Meter
    history: History | None = None
    proxy: ProxyServer | None = None

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        """Build every part (blocking: migrations run here). Nothing runs until start()."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.effective_database_url)
        driver, storage = _computes(settings, store)
        history = _history(settings, store, driver, storage)
        lifecycle = Lifecycle(
            store=store,
            settings=settings,
            driver=driver,
            local_storage=storage,
            start_timeout=settings.compute_start_timeout,
            stop_timeout=settings.compute_stop_timeout,
            history=history,
        )
        access = LocalControlPlane(
            store=store, lifecycle=lifecycle, pooler_max_backends=settings.pooler_max_backends
        )
        meter = Meter(
            store=store,
            lifecycle=lifecycle,
            interval=settings.metering_interval,
            history_sizes=history.project_bytes if history is not None else None,
        )
        leader = LeaderWork(store=store, lifecycle=lifecycle, meter=meter, history=history)
        scheduler = Scheduler(
            store=store, lifecycle=lifecycle, reported=access.last_active, on_tick=leader.tick
        )
        lifecycle.before_stop = meter.sample_written
        return cls(
            settings=settings,
            store=store,
            control=Control.open(store, settings),
            driver=driver,
            storage=storage,
            lifecycle=lifecycle,
            runner=OperationsRunner(
                store=store,
                lifecycle=lifecycle,
                restorer=Restorer(history=history, lifecycle=lifecycle) if history else None,
            ),
            access=access,
            scheduler=scheduler,
            meter=meter,
            history=history,
        )

    async def start(self, *, proxy: bool = False) -> None:
        """Reconcile recorded state with the computes found running, then run operations
        (and the proxy, when asked)."""
        if isinstance(self.storage, LocalStorage):
            await self.storage.ensure_template()
        if self.history is not None:
            await self.history.start()
        await reconcile(self.store, self.lifecycle)
        self.runner.start()
        self.scheduler.start()
        if proxy:
            await self.start_proxy()

    async def start_proxy(self) -> ProxyServer:
        self.proxy = await make_proxy(self.settings, self.access)
        await self.proxy.start()
        return self.proxy

    async def stop(self, *, suspend_computes: bool = True) -> None:
        """Stop the proxy and the operations; suspend every compute cleanly (embedded mode
        owns its computes: nothing is left running after `selkie up` exits)."""
        if self.proxy is not None:
            await self.proxy.stop()
        await self.scheduler.stop()
        await self.runner.stop()
        if suspend_computes:
            await self.lifecycle.suspend_all()
        if self.history is not None:
            await self.history.stop()
        await self.driver.close()

    def close(self) -> None:
        self.store.close()

    def prometheus(self) -> bytes:
        lc = self.lifecycle
        return render(
            Sources(
                store=self.store,
                start_counts=lambda: dict(lc.start_counts),
                start_seconds=lambda: list(lc.start_seconds),
                suspend_counts=lambda: dict(lc.suspend_counts),
                proxy=self.proxy,
                history=self.history,
            )
        )

    def durability(self, endpoint_id: str, durability: Durability) -> Durable:
        if self.history is None:
            raise Conflict("durable storage is off here (archive_url=off, or Kubernetes computes)")
        return self.history.durable(endpoint_id, durability)

    def pool_metrics(self, endpoint_id: str) -> dict[str, int]:
        pool = self.proxy.pools.get(endpoint_id) if self.proxy is not None else None
        return pool.metrics() if pool is not None else {}


async def make_proxy(settings: Settings, control: ControlPlane) -> ProxyServer:
    """The proxy as configured (TLS made on first start), in front of ``control``."""
    host, port = split_listen(settings.proxy_listen)
    tls, _ = await asyncio.to_thread(
        server_context,
        cert=settings.proxy_tls_cert,
        key=settings.proxy_tls_key,
        data_dir=settings.data_dir,
        domain=settings.proxy_domain,
    )
    return ProxyServer(
        control,
        ProxyConfig(
            listen_host=host,
            listen_port=port,
            domain=settings.proxy_domain,
            tls=tls,
            wake_timeout=settings.proxy_wake_timeout,
            pool_wait_timeout=settings.pooler_wait_timeout,
        ),
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM once it has
    stopped, killing the process before the computes are suspended."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGINT (Ctrl-C) and SIGTERM both mean: stop cleanly, suspending every compute."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def banner(settings: Settings, first: FirstStart) -> str:
    api = settings.effective_api_url
    lines = [
        f"Selkie API on {api}  (docs: {api}/docs)",
        f"MySQL proxy on {settings.proxy_host}:{settings.proxy_port}",
    ]
    if first.api_key:
        lines += [
            "",
            "First start: created an API key. It is shown this once; keep it:",
            f"  export SELKIE_API_KEY={first.api_key}",
        ]
    if first.demo is not None:
        demo = first.demo
        role = demo.roles[0]
        db = demo.databases[0]
        ep = demo.endpoints[0]
        lines += [
            "",
            f"Created project 'demo' ({demo.project.id}); its password is shown this once.",
            f"  connection URI: {demo.connection_uris[0].connection_uri}",
            "  connect:        "
            + shlex.join(
                [
                    "mariadb",
                    "-h",
                    settings.proxy_host,
                    "-P",
                    str(settings.proxy_port),
                    "-u",
                    f"{ep.id}.{role.name}",
                    f"-p{role.password}",
                    db.name,
                ]
            ),
        ]
    lines += ["", "Ctrl-C stops."]
    return "\n".join(lines)


async def serve(
    settings: Settings,
    *,
    proxy: bool = True,
    on_ready: Callable[[FirstStart], None] | None = None,
) -> None:
    """Run the API, the operations runner and the scheduler (and the proxy, unless
    ``proxy`` is false: `selkie api`) until stopped; then, in embedded mode, suspend every
    compute and exit. An API replica leaves computes running for the others."""
    platform = await asyncio.to_thread(Platform.open, settings)
    try:
        await platform.start(proxy=proxy)
        try:
            # Embedded: a first key and a demo project. API replicas: keys are made with
            # `selkie api-keys create` against the shared store.
            first = (
                await asyncio.to_thread(first_start, platform.control)
                if proxy
                else FirstStart(api_key=None, demo=None)
            )
            host, port = split_listen(settings.api_listen)
            config = uvicorn.Config(
                create_app(
                    platform.control,
                    pool_metrics=platform.pool_metrics,
                    durability=platform.durability,
                    prometheus=platform.prometheus,
                    control_plane=platform.access,
                    internal_token=settings.internal_token,
                    leader=lambda: platform.scheduler.leader.held,
                ),
                host=host,
                port=port,
                log_level=settings.log_level,
                access_log=False,
                lifespan="on",
            )
            server = _Server(config)
            stop_on_signals(lambda: setattr(server, "should_exit", True))
            if on_ready is not None:
                on_ready(first)
            await server.serve()
            if not server.started:
                raise SystemExit(f"selkie: the API could not listen on {settings.api_listen}")
        finally:
            await platform.stop(suspend_computes=proxy)
    finally:
        platform.close()


async def serve_proxy(settings: Settings) -> None:
    """`selkie proxy`. With ``internal_token`` and ``api_url`` set, a proxy replica that
    asks `selkie api` replicas over HTTP (no state store here); otherwise the proxy with an
    in-process control plane on the state store."""
    stopping = asyncio.Event()
    if settings.internal_token and settings.api_url:
        control = HttpControlPlane(
            settings.api_urls,
            settings.internal_token,
            wake_timeout=settings.proxy_wake_timeout + 5,
        )
        server = await make_proxy(settings, control)
        await server.start()
        stop_on_signals(stopping.set)
        try:
            await stopping.wait()
        finally:
            await server.stop()
            await control.close()
        return
    platform = await asyncio.to_thread(Platform.open, settings)
    try:
        await platform.start(proxy=True)
        stop_on_signals(stopping.set)
        try:
            await stopping.wait()
        finally:
            await platform.stop()
    finally:
        platform.close()
