"""The platform's wiring: every part built and connected in this one place, by
constructor arguments (nothing is assigned afterwards).

:class:`Platform` holds the state store, control-plane services, compute and storage
drivers, the lifecycle manager, the operations runner, the scheduler, the meter, durable
storage and (when asked) the proxy. Tests and benchmarks use it directly; :mod:`selkie.serve`
runs it as `selkie up`, `selkie api` and `selkie proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import ipaddress
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from selkie.archive import Archive, open_archive
from selkie.compute.base import ComputeDriver
from selkie.compute.cgroups import Cgroups
from selkie.compute.local import LocalDriver
from selkie.config import Settings, split_listen
from selkie.control import Control
from selkie.control.autoscaler import Autoscaler
from selkie.control.durability import Durable
from selkie.control.health import Health
from selkie.control.history import History
from selkie.control.leader import LeaderWork
from selkie.control.lifecycle import Lifecycle
from selkie.control.local_plane import LocalControlPlane
from selkie.control.meter import Meter
from selkie.control.quotas import Quotas
from selkie.control.reconciler import reconcile
from selkie.control.replicas import ReplicaStatus
from selkie.control.restores import Restorer
from selkie.control.runner import OperationsRunner
from selkie.control.scheduler import Scheduler
from selkie.control.schema_diff import SchemaDiff
from selkie.controlplane import ControlPlane
from selkie.errors import ConfigError, Conflict
from selkie.metering.prometheus import Sources, render
from selkie.metering.starts import StartMetrics
from selkie.model import Durability
from selkie.proxy.server import ProxyConfig, ProxyServer
from selkie.proxy.tls import server_context
from selkie.safekeeper.accounts import ReplicationKey
from selkie.safekeeper.api import SafekeeperApi
from selkie.safekeeper.dump import HistorySource
from selkie.safekeeper.remote import RemoteSafekeeper
from selkie.safekeeper.service import Safekeeper
from selkie.storage.base import StorageDriver, Storages
from selkie.storage.local import LocalStorage
from selkie.storage.pageserver import PageServerStorage
from selkie.storage.restore import Tools
from selkie.store import Store
from selkie.store.tables import BranchRow

log = logging.getLogger(__name__)


def open_settings_archive(settings: Settings) -> Archive:
    """The archive the settings name."""
    return open_archive(
        settings.effective_archive_url,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        session_token=settings.s3_session_token,
    )


def _history(
    settings: Settings, store: Store, driver: ComputeDriver, storage: StorageDriver
) -> History | None:
    """Durable storage of branches: the archive, the safekeeper, and the history service
    over them (None with the archive off). Computes in Kubernetes are followed, but their
    data has no base images (it is on claims out of reach)."""
    if not settings.archive_enabled:
        return None
    archive = open_settings_archive(settings)
    user = getpass.getuser()
    safekeeper: SafekeeperApi
    source: HistorySource | None = None
    if settings.safekeeper_url:
        # `selkie safekeeper` elsewhere: it follows the computes and serves the binlogs.
        safekeeper = RemoteSafekeeper(settings.safekeeper_url, settings.internal_token)
    else:
        local = Safekeeper(
            root=settings.effective_safekeeper_dir,
            archive=archive,
            note_statements=driver.note_admin_statements,
        )
        safekeeper, source = local, HistorySource(archive=archive, safekeeper=local)
    return History(
        store=store,
        settings=settings,
        archive=archive,
        safekeeper=safekeeper,
        binlog_source=source,
        storage=storage,
        driver=driver,
        # Restore servers run as computes do: unprivileged where Selkie is root.
        key=ReplicationKey.load(settings.safekeeper_key, settings.data_dir),
        tools=Tools(
            mariadbd=settings.mariadbd,
            user=user,
            identity=driver.identity if isinstance(driver, LocalDriver) else None,
        ),
    )


def _computes(settings: Settings, store: Store) -> tuple[ComputeDriver, StorageDriver]:
    """The compute driver and branch storage the settings ask for."""
    if settings.compute_driver == "kubernetes":
        from selkie.compute.kubernetes import KubernetesDriver, KubeSettings
        from selkie.storage.kubernetes import KubernetesStorage

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

        return driver, KubernetesStorage(
            driver, project_of=project_of, scratch=settings.data_dir / "staging"
        )
    local = LocalDriver(
        data_dir=settings.data_dir,
        mariadbd=settings.mariadbd,
        bind_address=settings.compute_bind_address,
        cgroups=Cgroups(enabled=settings.compute_cgroups),
        os_user=settings.compute_os_user,
    )
    return local, LocalStorage(data_dir=settings.data_dir)


def claim_data_dir(settings: Settings) -> int | None:
    """Make the data dir (0700: it holds datadirs, keys and the state store) and, where
    the state store is the SQLite file inside it, lock it: a second process on the same
    data dir would run the same computes twice. Returns the lock's descriptor."""
    data_dir = settings.data_dir
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True)
    if settings.database_url:
        return None  # a shared store: control planes coordinate through it
    fd = os.open(data_dir / "selkie.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"data dir {data_dir} is in use by Selkie process {holder}; stop it first, or "
            "use another SELKIE_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


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
    quotas: Quotas
    start_metrics: StartMetrics
    autoscaler: Autoscaler
    health: Health
    schemas: SchemaDiff
    history: History | None = None
    proxy: ProxyServer | None = None
    # The data dir's lock (a file descriptor), held while this platform is open.
    lock: int | None = None

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        """Build every part (blocking: migrations run here). Nothing runs until start()."""
        lock = claim_data_dir(settings)
        store = Store(settings.effective_database_url)
        if store.url.startswith("sqlite"):
            with contextlib.suppress(OSError):
                (settings.data_dir / "selkie.db").chmod(0o600)
        driver, storage = _computes(settings, store)
        storages = Storages(
            local=storage,
            pageserver=PageServerStorage(data_dir=settings.data_dir, template=storage),
        )
        history = _history(settings, store, driver, storage)
        meter = Meter(
            store=store,
            driver=driver,
            storages=storages,
            interval=settings.metering_interval,
            history_sizes=history.project_bytes if history is not None else None,
        )
        start_metrics = StartMetrics()
        lifecycle = Lifecycle(
            store=store,
            settings=settings,
            driver=driver,
            storages=storages,
            start_timeout=settings.compute_start_timeout,
            stop_timeout=settings.compute_stop_timeout,
            history=history,
            before_stop=meter.sample_written,
            observer=start_metrics,
        )
        access = LocalControlPlane(
            store=store, lifecycle=lifecycle, pooler_max_backends=settings.pooler_max_backends
        )
        quotas = Quotas(store=store, suspend=lifecycle.suspend, interval=settings.metering_interval)
        health = Health(store, lifecycle)
        control = Control.open(store, settings)
        leader = LeaderWork(
            store=store,
            lifecycle=lifecycle,
            meter=meter,
            quotas=quotas,
            health=health,
            history=history,
            branches=control.branches,
        )
        scheduler = Scheduler(
            store=store, lifecycle=lifecycle, reported=access.last_active, on_tick=leader.tick
        )
        return cls(
            settings=settings,
            store=store,
            control=control,
            driver=driver,
            storage=storage,
            lifecycle=lifecycle,
            runner=OperationsRunner(
                store=store,
                lifecycle=lifecycle,
                restorer=(
                    Restorer(store=store, history=history, lifecycle=lifecycle) if history else None
                ),
            ),
            access=access,
            scheduler=scheduler,
            meter=meter,
            quotas=quotas,
            start_metrics=start_metrics,
            lock=lock,
            autoscaler=Autoscaler(
                store=store,
                lifecycle=lifecycle,
                driver=driver,
                interval=settings.autoscale_interval,
                up_seconds=settings.autoscale_up_seconds,
                down_seconds=settings.autoscale_down_seconds,
            ),
            health=health,
            schemas=SchemaDiff(store=store, lifecycle=lifecycle, driver=driver),
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
        self.autoscaler.start()
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
        await self.health.close()
        await self.autoscaler.stop()
        await self.runner.stop()
        if suspend_computes:
            await self.lifecycle.suspend_all()
        if self.history is not None:
            await self.history.stop()
        await self.driver.close()

    def close(self) -> None:
        self.store.close()
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def is_leader(self) -> bool:
        return self.scheduler.leader.held

    def recent_starts(self, endpoint_id: str) -> list[tuple[datetime, float]]:
        return self.start_metrics.recent_starts(endpoint_id)

    def prometheus(self) -> bytes:
        starts = self.start_metrics
        return render(
            Sources(
                store=self.store,
                start_counts=lambda: dict(starts.start_counts),
                start_seconds=lambda: list(starts.start_seconds),
                suspend_counts=lambda: dict(starts.suspend_counts),
                unhealthy_counts=lambda: dict(self.health.unhealthy),
                failed_check_counts=lambda: dict(self.health.failed_checks),
                proxy=self.proxy,
                history=self.history,
            )
        )

    async def durability(self, endpoint_id: str, durability: Durability) -> Durable:
        if self.history is None:
            raise Conflict("durable storage is off here (archive_url=off)")
        return await self.history.following.durable_now(endpoint_id, durability)

    async def replica_status(self, endpoint_id: str) -> ReplicaStatus:
        """A read-only compute's replication, asked of its server now."""
        if self.history is None:
            raise Conflict("durable storage is off here (archive_url=off)")
        return await self.history.replicas.status(endpoint_id)

    async def compare_schema(self, base_branch_id: str, branch_id: str, database: str) -> str:
        """The unified diff of a database's schema on two branches (their endpoints woken)."""
        return await self.schemas.compare(base_branch_id, branch_id, database)

    def pool_metrics(self, endpoint_id: str) -> dict[str, int]:
        pool = self.proxy.pools.get(endpoint_id) if self.proxy is not None else None
        return pool.metrics() if pool is not None else {}


def tls_key_path(settings: Settings, cert_path: Path) -> Path:
    """The key beside the proxy's certificate (configured, or the self-signed pair)."""
    if settings.proxy_tls_key:
        return Path(settings.proxy_tls_key)
    return cert_path.with_name("proxy-key.pem")


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def make_proxy(settings: Settings, control: ControlPlane) -> ProxyServer:
    """The proxy as configured (TLS made on first start), in front of ``control``."""
    host, port = split_listen(settings.proxy_listen)
    tls, cert_path = await asyncio.to_thread(
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
            pool_max_packet=settings.pooler_max_packet,
            relay=settings.proxy_relay,
            handshake_timeout=settings.proxy_handshake_timeout,
            max_preauth=settings.proxy_max_preauth,
            max_preauth_per_address=settings.proxy_max_preauth_per_address,
            proxy_protocol=settings.proxy_protocol,
            require_tls=not settings.proxy_allow_plaintext and not is_loopback(host),
            http_listen=split_listen(settings.http_listen) if settings.http_listen else None,
            # HTTPS with the proxy's certificate beyond loopback; plain HTTP on loopback.
            http_tls_files=None
            if not settings.http_listen or is_loopback(split_listen(settings.http_listen)[0])
            else (str(cert_path), str(tls_key_path(settings, cert_path))),
            http_trusted_proxies=tuple(
                a.strip() for a in settings.proxy_trusted_proxies.split(",") if a.strip()
            ),
        ),
    )
