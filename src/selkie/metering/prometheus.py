"""Prometheus metrics of a running platform, collected at scrape time from the parts that
already keep the numbers (store, lifecycle, scheduler, proxy, pooler): nothing is counted
twice and nothing needs a background task."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from selkie.metering.counters import HISTORY, STORAGE, TRANSFER, WRITTEN
from selkie.metering.usage import storage_by_project
from selkie.model import EndpointHealth, EndpointState, SuspendTier
from selkie.store import Store
from selkie.store.health import endpoint_health
from selkie.store.tables import EndpointHealthRow, EndpointRow, UsageHourRow

RESUME_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
RESTORE_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class Sources:
    """Where the numbers live. Any part may be absent (an API-only process, say)."""

    store: Store
    start_counts: Callable[[], dict[str, int]]
    start_seconds: Callable[[], list[float]]
    suspend_counts: Callable[[], dict[str, int]]
    # Computes failed and stopped for not answering health checks (control/health.py).
    unhealthy_counts: Callable[[], dict[str, int]] = dict
    # Health checks a compute did not answer, by endpoint (control/health.py).
    failed_check_counts: Callable[[], dict[str, int]] = dict
    proxy: Any = None  # selkie.proxy.server.ProxyServer, when in this process
    history: Any = None  # selkie.control.history.History, when durable storage runs here


def _histogram(
    values: list[float], bounds: tuple[float, ...] = RESUME_BUCKETS
) -> tuple[list[tuple[str, float]], float]:
    buckets = []
    for bound in bounds:
        buckets.append((str(bound), float(sum(1 for v in values if v <= bound))))
    buckets.append(("+Inf", float(len(values))))
    return buckets, float(sum(values))


class PlatformCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        states = GaugeMetricFamily(
            "selkie_endpoints", "Endpoints by current state", labels=["state"]
        )
        with src.store.read() as s:
            counts = dict(
                s.execute(
                    select(EndpointRow.current_state, func.count(EndpointRow.id)).group_by(
                        EndpointRow.current_state
                    )
                ).all()
            )
        for state in EndpointState:
            states.add_metric([state.value], float(counts.get(state.value, 0)))
        yield states
        yield self._tiers()
        yield self._sizes()
        yield self._health()
        yield from self._usage()

        yield from self._starts()
        if src.history is not None:
            yield from _history(src.history)
        if src.proxy is not None:
            yield from _proxy(src.proxy)

    def _tiers(self) -> Metric:
        """Suspended endpoints by tier: warm (compute frozen, holding memory) or cold."""
        tiers = GaugeMetricFamily(
            "selkie_endpoints_suspended",
            "Suspended endpoints by tier (warm: compute frozen; cold: stopped)",
            labels=["tier"],
        )
        with self.sources.store.read() as s:
            counts = dict(
                s.execute(
                    select(EndpointRow.suspend_tier, func.count(EndpointRow.id))
                    .where(EndpointRow.current_state == EndpointState.SUSPENDED.value)
                    .group_by(EndpointRow.suspend_tier)
                ).all()
            )
        warm = counts.pop(SuspendTier.WARM.value, 0)
        tiers.add_metric([SuspendTier.WARM.value], float(warm))
        tiers.add_metric([SuspendTier.COLD.value], float(sum(counts.values())))
        return tiers

    def _sizes(self) -> Metric:
        """The size of each running compute now (autoscaling moves it)."""
        sizes = GaugeMetricFamily(
            "selkie_endpoint_cu",
            "Size of the endpoint's running compute in CU",
            labels=["endpoint_id", "project_id"],
        )
        with self.sources.store.read() as s:
            running = s.execute(
                select(EndpointRow.id, EndpointRow.project_id, EndpointRow.current_cu)
                .where(EndpointRow.current_cu.is_not(None))
                .order_by(EndpointRow.id)
            ).all()
        for endpoint_id, project_id, cu in running:
            sizes.add_metric([endpoint_id, project_id], float(cu or 0.0))
        return sizes

    def _health(self) -> Metric:
        """What the health checks last observed of each endpoint whose health is known
        (the leader writes it to the store: every replica exports the same)."""
        healthy = GaugeMetricFamily(
            "selkie_endpoint_healthy",
            "1 while the endpoint's compute answers its health checks, 0 when its last check "
            "failed or the checks failed it (absent: unknown)",
            labels=["endpoint_id"],
        )
        with self.sources.store.read() as s:
            rows = s.execute(
                select(EndpointRow, EndpointHealthRow)
                .join(EndpointHealthRow, EndpointHealthRow.endpoint_id == EndpointRow.id)
                .order_by(EndpointRow.id)
            ).all()
            for ep, observed in rows:
                health, _, _ = endpoint_health(ep, observed)
                if health is not EndpointHealth.UNKNOWN:
                    healthy.add_metric([ep.id], 1.0 if health is EndpointHealth.HEALTHY else 0.0)
        return healthy

    def _starts(self) -> Iterator[Metric]:
        """Compute starts and suspends, and how long starts took."""
        src = self.sources
        starts = CounterMetricFamily(
            "selkie_compute_starts", "Compute starts", labels=["endpoint_id"]
        )
        for endpoint_id, n in src.start_counts().items():
            starts.add_metric([endpoint_id], float(n))
        yield starts
        suspends = CounterMetricFamily(
            "selkie_compute_suspends", "Compute suspends", labels=["endpoint_id"]
        )
        for endpoint_id, n in src.suspend_counts().items():
            suspends.add_metric([endpoint_id], float(n))
        yield suspends
        unhealthy = CounterMetricFamily(
            "selkie_compute_unhealthy",
            "Computes failed and stopped for answering no health check twice in a row",
            labels=["endpoint_id"],
        )
        for endpoint_id, n in src.unhealthy_counts().items():
            unhealthy.add_metric([endpoint_id], float(n))
        yield unhealthy
        failed_checks = CounterMetricFamily(
            "selkie_health_checks_failed",
            "Health checks a compute did not answer in time",
            labels=["endpoint_id"],
        )
        for endpoint_id, n in src.failed_check_counts().items():
            failed_checks.add_metric([endpoint_id], float(n))
        yield failed_checks
        buckets, total = _histogram(src.start_seconds())
        yield HistogramMetricFamily(
            "selkie_compute_start_seconds",
            "Time from a start request to a compute ready for clients",
            buckets=buckets,
            sum_value=total,
        )

    def _usage(self) -> Iterator[Metric]:
        """Metered totals per project, from the hourly counters, and storage now."""
        with self.sources.store.read() as s:
            totals = s.execute(
                select(UsageHourRow.project_id, UsageHourRow.metric, func.sum(UsageHourRow.value))
                .group_by(UsageHourRow.project_id, UsageHourRow.metric)
                .order_by(UsageHourRow.project_id)
            ).all()
        sizes = storage_by_project(self.sources.store)
        families = {
            TRANSFER: CounterMetricFamily(
                "selkie_usage_data_transfer_bytes",
                "Bytes sent to clients, as billed",
                labels=["project_id"],
            ),
            WRITTEN: CounterMetricFamily(
                "selkie_usage_written_data_bytes",
                "Bytes computes wrote to their redo logs, as billed",
                labels=["project_id"],
            ),
            STORAGE: CounterMetricFamily(
                "selkie_usage_storage_byte_seconds",
                "Storage occupied over time, as billed",
                labels=["project_id"],
            ),
            HISTORY: CounterMetricFamily(
                "selkie_usage_instant_restore_byte_seconds",
                "Restore history kept in the archive over time, as billed",
                labels=["project_id"],
            ),
        }
        for project_id, metric, total in totals:
            if metric in families:
                families[metric].add_metric([project_id], float(total))
        yield from families.values()
        storage = GaugeMetricFamily(
            "selkie_storage_bytes", "Bytes the project's branches occupy", labels=["project_id"]
        )
        for project_id, size in sizes.items():
            storage.add_metric([project_id], float(size))
        yield storage


def _history(history: Any) -> Iterator[Metric]:
    """The safekeeper, base images and restores (selkie.control.history)."""
    lag_s = GaugeMetricFamily(
        "selkie_archive_lag_seconds",
        "Age of the oldest transaction the safekeeper holds that the archive does not",
        labels=["endpoint_id", "timeline_id"],
    )
    lag_b = GaugeMetricFamily(
        "selkie_archive_lag_bytes",
        "Log bytes the safekeeper holds that the archive does not",
        labels=["endpoint_id", "timeline_id"],
    )
    streaming = GaugeMetricFamily(
        "selkie_safekeeper_streaming",
        "1 while the safekeeper follows the compute's binary log",
        labels=["endpoint_id"],
    )
    sync = GaugeMetricFamily(
        "selkie_sync_commit",
        "1 while the compute's commits wait for the safekeeper (semi-sync on, as its server "
        "says), 0 while they do not (async, or fallen back)",
        labels=["endpoint_id"],
    )
    observed = history.following.sync.observed
    for st in history.safekeeper.status():
        endpoint = st.endpoint_id or ""
        lag_s.add_metric([endpoint, st.timeline_id], st.lag_seconds)
        lag_b.add_metric([endpoint, st.timeline_id], float(st.lag_bytes))
        if st.endpoint_id:
            streaming.add_metric([endpoint], 1.0 if st.streaming else 0.0)
            state = observed.get(endpoint)
            if state is not None:
                sync.add_metric([endpoint], 1.0 if state == "on" else 0.0)
    yield from (lag_s, lag_b, streaming, sync)
    replica_lag = GaugeMetricFamily(
        "selkie_replica_lag_seconds",
        "How far a running read-only compute's applier is behind what it received "
        "(Seconds_Behind_Master, sampled every 2 s by the scheduler's leader)",
        labels=["endpoint_id"],
    )
    for endpoint, status in sorted(history.replicas.sampled.items()):
        if status.replication_lag_seconds is not None:
            replica_lag.add_metric([endpoint], status.replication_lag_seconds)
    yield replica_lag
    shipped = CounterMetricFamily(
        "selkie_archive_segments_shipped", "Log objects written to the archive"
    )
    shipped.add_metric([], float(history.safekeeper.segments_shipped))
    yield shipped
    shipped_bytes = CounterMetricFamily(
        "selkie_archive_shipped_bytes", "Compressed log bytes written to the archive"
    )
    shipped_bytes.add_metric([], float(history.safekeeper.bytes_shipped))
    yield shipped_bytes
    m = history.metrics
    images = CounterMetricFamily("selkie_base_images", "Base images stored")
    images.add_metric([], float(m.base_images))
    yield images
    image_bytes = CounterMetricFamily(
        "selkie_base_image_bytes", "Bytes of the datadirs stored as base images"
    )
    image_bytes.add_metric([], float(m.base_image_bytes))
    yield image_bytes
    buckets, total = _histogram(m.restore_seconds, RESTORE_BUCKETS)
    yield HistogramMetricFamily(
        "selkie_restore_seconds",
        "Restores from the archive (point in time, restore, rebuild of a lost datadir)",
        buckets=buckets,
        sum_value=total,
    )


def render(sources: Sources) -> bytes:
    registry = CollectorRegistry()
    registry.register(PlatformCollector(sources))
    return bytes(generate_latest(registry))


def _proxy(proxy: Any) -> Iterator[Metric]:
    """Sessions, bytes and commands per endpoint, logins, and the pools."""
    sessions = GaugeMetricFamily(
        "selkie_proxy_sessions", "Client sessions open", labels=["endpoint_id"]
    )
    transfer = CounterMetricFamily(
        "selkie_proxy_bytes", "Bytes relayed", labels=["endpoint_id", "direction"]
    )
    statements = CounterMetricFamily(
        "selkie_proxy_statements", "Commands relayed", labels=["endpoint_id"]
    )
    for a in proxy.activity():
        sessions.add_metric([a.endpoint_id], float(a.sessions))
        transfer.add_metric([a.endpoint_id, "to_client"], float(a.bytes_to_clients))
        transfer.add_metric([a.endpoint_id, "from_client"], float(a.bytes_from_clients))
        statements.add_metric([a.endpoint_id], float(a.statements))
    yield sessions
    yield transfer
    yield statements
    logins = CounterMetricFamily(
        "selkie_proxy_logins", "Client logins by outcome", labels=["outcome"]
    )
    for outcome, n in sorted(proxy.logins.items()):
        logins.add_metric([outcome], float(n))
    yield logins
    failures = CounterMetricFamily(
        "selkie_proxy_auth_failures", "Failed client logins (wrong password, unknown role)"
    )
    failures.add_metric([], float(proxy.logins.get("failed", 0)))
    yield failures
    waiting = GaugeMetricFamily(
        "selkie_proxy_preauth_connections", "Connections not yet authenticated"
    )
    waiting.add_metric([], float(proxy.admission.waiting))
    yield waiting
    refused = CounterMetricFamily(
        "selkie_proxy_preauth_refused",
        "Connections refused before authentication, by the cap that refused them",
        labels=["cap"],
    )
    for cap in ("total", "address"):
        refused.add_metric([cap], float(proxy.admission.refused.get(cap, 0)))
    yield refused
    pooler = GaugeMetricFamily(
        "selkie_pooler", "Pooler state per endpoint", labels=["endpoint_id", "what"]
    )
    for endpoint_id, pool in proxy.pools.items():
        for what, value in pool.metrics().items():
            pooler.add_metric([endpoint_id, what], float(value))
    yield pooler
