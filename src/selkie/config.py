"""Selkie's settings, read in this one place.

Precedence: built-in defaults < TOML file (``--config`` / ``SELKIE_CONFIG``) < ``SELKIE_*``
environment variables. A field ``foo_bar`` is ``foo_bar = …`` in the file and
``SELKIE_FOO_BAR`` in the environment. Everything else in Selkie receives a parsed
:class:`Settings`; nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from selkie import eventloop
from selkie.errors import ConfigError

ENV_PREFIX = "SELKIE_"
INTERNAL_TOKEN_MIN = 32
# The standard AWS variables, read for the S3 archive (first one set wins per setting).
AWS_ENV = {
    "s3_endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "s3_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "s3_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "s3_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "s3_session_token": ("AWS_SESSION_TOKEN",),
}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A price list: what a unit costs beyond what the plan includes each month.

    GB means GiB (2**30 bytes); a GB-month is one GiB stored for a whole calendar month.
    """

    name: str
    currency: str = "USD"
    price_per_cu_hour: Decimal = Decimal("0")
    price_per_gb_month: Decimal = Decimal("0")
    price_per_gb_transfer: Decimal = Decimal("0")
    price_per_gb_written: Decimal = Decimal("0")
    included_cu_hours: Decimal = Decimal("0")
    included_gb_months: Decimal = Decimal("0")
    included_gb_transfer: Decimal = Decimal("0")
    included_gb_written: Decimal = Decimal("0")
    # Restore history in the archive (GiB-months), billed apart as Neon bills it.
    price_per_gb_month_instant_restore: Decimal = Decimal("0")
    included_gb_months_instant_restore: Decimal = Decimal("0")


# Used when the configuration names no plans. Example prices: configure your own.
DEFAULT_PLANS = {
    "default": Plan(
        name="default",
        price_per_cu_hour=Decimal("0.16"),
        price_per_gb_month=Decimal("0.35"),
        price_per_gb_transfer=Decimal("0.09"),
        included_cu_hours=Decimal("5"),
        included_gb_months=Decimal("0.5"),
        included_gb_transfer=Decimal("5"),
        price_per_gb_month_instant_restore=Decimal("0.20"),
        included_gb_months_instant_restore=Decimal("1"),
    )
}


def parse_plans(name: str, raw: Any) -> dict[str, Plan]:
    """Plans from a TOML table (``[plans.NAME]``) or a JSON object (environment)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"setting {name}: not a JSON object: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"setting {name}: needs at least one plan, as a table of tables")
    fields = {f.name for f in dataclasses.fields(Plan)} - {"name"}
    plans = {}
    for plan_name, values in raw.items():
        where = f"setting {name}: plan {plan_name!r}"
        if not isinstance(values, dict):
            raise ConfigError(f"{where} is not a table")
        unknown = set(values) - fields
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            if key == "currency":
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{where}: currency must be a code such as USD")
                parsed[key] = value
                continue
            try:
                if isinstance(value, bool):
                    raise InvalidOperation
                number = Decimal(str(value))
            except InvalidOperation as exc:
                raise ConfigError(f"{where}: {key} must be a number") from exc
            if not number.is_finite() or number < 0:
                raise ConfigError(f"{where}: {key} must be a non-negative number")
            parsed[key] = number
        plans[str(plan_name)] = Plan(name=str(plan_name), **parsed)
    return plans


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Server side.
    data_dir: Path = Path(".selkie")
    api_listen: str = "127.0.0.1:8080"
    proxy_listen: str = "127.0.0.1:6033"
    # Default: a SQLite file in the data dir. postgresql+psycopg://… for PostgreSQL.
    database_url: str = ""
    # Host name clients use to reach the proxy, as put in connection strings.
    # Empty: the host of proxy_listen.
    proxy_public_host: str = ""
    # Domain under which `<endpoint_id>.<domain>` names an endpoint (TLS SNI).
    proxy_domain: str = "selkie.localhost"
    region_id: str = "local"
    log_level: str = "info"
    # Proxy.
    proxy_tls_cert: str = ""  # PEM; empty: selkie up makes a self-signed pair in the data dir
    proxy_tls_key: str = ""
    proxy_wake_timeout: float = 30.0
    # The largest request body the API reads (bytes; larger: 413 before parsing).
    api_max_body_bytes: int = 1 << 20
    # Requests a second per API key (bursts of twice that); beyond: 429 with Retry-After.
    api_rate_limit: float = 50.0
    # Live objects one organization may have (0: no limit); beyond: 429 naming the limit.
    org_max_projects: int = 100
    org_max_branches: int = 1000
    org_max_endpoints: int = 200
    org_max_api_keys: int = 100
    # Everything before a client is authenticated (TLS, handshake, auth switch) must end
    # within this many seconds; at most this many connections may be in that phase, in all
    # and from one address (beyond: ERR 1040 and close).
    proxy_handshake_timeout: float = 10.0
    proxy_max_preauth: int = 1000
    proxy_max_preauth_per_address: int = 256
    # The proxy sits behind a load balancer that sends HAProxy's PROXY protocol header (v1 or
    # v2) with the real client address; every connection must then start with one.
    proxy_protocol: bool = False
    # SQL over HTTP (PlanetScale's database-js protocol): where the proxy listens for it
    # (plain HTTP on loopback, HTTPS with the proxy's certificate elsewhere); empty: off.
    http_listen: str = "127.0.0.1:8081"
    # Addresses (comma-separated) of HTTP reverse proxies in front of SQL over HTTP whose
    # X-Forwarded-For/-Proto headers are believed; empty: no one's (a request's own
    # connection says whether it came over TLS).
    proxy_trusted_proxies: str = ""
    # The web console at /console on the API listener (sign-in with an API key).
    console: bool = True
    # Where the proxy listens beyond loopback, logins must use TLS unless this is set.
    proxy_allow_plaintext: bool = False
    # The plaintext session relay: "auto" (the compiled one where it was built, else
    # Python), "c" (fail at start without it) or "python" (docs/proxy.md, The relay).
    proxy_relay: str = "auto"
    # Pooler: backend connections per endpoint (0: 40 per CU, at least 10), and how long a
    # client waits for one.
    pooler_max_backends: int = 0
    pooler_wait_timeout: float = 30.0
    # The largest command a pooled client may send (bytes; larger: ERR 1153). Commands are
    # read whole before a backend is borrowed, so this bounds one pooled session's memory.
    pooler_max_packet: int = 64 * 2**20
    # Computes: "local" (mariadbd processes on this machine) or "kubernetes".
    compute_driver: str = "local"
    # The event loop the servers run on: "auto" (uvloop when installed), "uvloop", "asyncio".
    event_loop: str = "auto"
    # Kubernetes driver: namespace (default: the pod's own, else "default"), images, and
    # the claims made per branch.
    kubernetes_namespace: str = ""
    # A kubeconfig file; empty: the pod's service account (in cluster), else ~/.kube/config.
    kubernetes_kubeconfig: str = ""
    kubernetes_image: str = "mariadb:11.4"
    kubernetes_pageserver_image: str = ""
    kubernetes_storage_class: str = ""
    kubernetes_storage_size: str = "10Gi"
    mariadbd: str = ""  # default: mariadbd on PATH, else /usr/sbin/mariadbd
    pageserver_mariadbd: str = ""  # the patched server for pageserver storage
    compute_bind_address: str = "127.0.0.1"
    compute_cgroups: bool = True
    # When Selkie runs as root, local computes run as this unprivileged OS user (empty:
    # as root); see docs/security.md.
    compute_os_user: str = "mysql"
    # Hosts a project's page server and safekeeper may be on (comma-separated; empty: any
    # host name or IP address). Only admins set these addresses either way.
    storage_allowed_hosts: list[str] = field(default_factory=list)
    # A starting compute runs without its CPU limit until it is ready (docs/compute.md).
    compute_startup_boost: bool = True
    # Autoscaling (endpoints whose min CU is below their max): how often each compute's
    # load is read (seconds), how long it must want more before it grows, and how long less
    # before it shrinks.
    autoscale_interval: float = 1.0
    autoscale_up_seconds: float = 2.0
    autoscale_down_seconds: float = 60.0
    compute_start_timeout: float = 60.0
    # Warm suspend (docs/compute.md): an idle local compute is first frozen (cgroup freezer:
    # no CPU, memory kept, resumes in about a millisecond), and stopped cold after this many
    # more seconds; 0: every suspend is cold, as on Kubernetes.
    warm_suspend_seconds: float = 900.0
    # ...or earlier, least recently active first, while frozen computes hold more memory
    # than this many bytes together (0: no budget).
    warm_suspend_memory: int = 4 * 2**30
    compute_stop_timeout: float = 30.0
    # Metering: how often storage and written data are sampled (seconds).
    metering_interval: float = 60.0
    # Durable storage. The archive keeps every branch's history: file:///abs/path, or
    # s3://bucket/prefix (credentials and endpoint from the AWS_* variables below); empty:
    # <data_dir>/archive; "off": no history, no restore (a lost disk loses the data).
    archive_url: str = ""
    # Where the safekeeper fsyncs the log it receives before it is archived; empty:
    # <data_dir>/safekeeper. Put it on another disk than the data dir.
    safekeeper_dir: Path | None = None
    # How the safekeeper reaches a compute to follow it: "auto" (the compute's unix socket
    # where it has one on this host, else TCP) or "tcp" (always its TCP address, as from
    # another host). Either way it logs in as its replication account.
    safekeeper_follow: str = "auto"
    # The secret the safekeeper's replication accounts' passwords derive from (hex, at least
    # 16 bytes; the same in every process of an installation). Empty: a random key kept in
    # <data_dir>/safekeeper.key.
    safekeeper_key: str = ""
    # Where the safekeeper serves timelines' binlogs to replicas (docs/storage.md, The
    # binlog server): unix:/path, host:port, or "off". Empty: a unix socket in the data dir.
    safekeeper_listen: str = ""
    # The control plane: the URL of a safekeeper running as its own process (`selkie
    # safekeeper`, asked with the internal token); empty: the safekeeper runs in process.
    safekeeper_url: str = ""
    # `selkie safekeeper`: where its internal HTTP API listens (a private address).
    safekeeper_api_listen: str = "127.0.0.1:8083"
    # A running compute gets a new base image after this many seconds, or after this many
    # bytes of log, whichever comes first (suspends always make one).
    base_image_interval: float = 6 * 3600.0
    base_image_log_bytes: int = 1 << 30
    # How long a semi-synchronous commit (durability=sync) waits for the safekeeper before
    # the compute falls back to asynchronous (milliseconds).
    sync_commit_timeout_ms: int = 2000
    # S3 settings, read from the standard AWS variables (AWS_ENDPOINT_URL_S3 or
    # AWS_ENDPOINT_URL, AWS_REGION or AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, …).
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_session_token: str = ""
    # Billing: price lists by name ([plans.NAME] tables), and the plan of projects that
    # name none.
    plans: dict[str, Plan] = field(default_factory=lambda: dict(DEFAULT_PLANS))
    default_plan: str = "default"
    # Shared secret of the internal routes (proxy replicas -> API replicas). Empty: those
    # routes are off, and `selkie proxy` runs its own in-process control plane.
    internal_token: str = ""
    # Where `selkie api` serves the internal routes (what proxy replicas ask), apart from
    # the public API: a private address. Empty: on the public listener (with a warning).
    internal_listen: str = ""
    # Client side (CLI, scripts, proxy replicas). Proxy replicas take several, comma-separated.
    api_url: str = ""
    api_key: str = ""

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'selkie.db').resolve()}"

    @property
    def archive_enabled(self) -> bool:
        return self.archive_url != "off"

    @property
    def effective_archive_url(self) -> str:
        if self.archive_url:
            return self.archive_url
        return f"file://{(self.data_dir / 'archive').resolve()}"

    @property
    def effective_safekeeper_dir(self) -> Path:
        return (self.safekeeper_dir or self.data_dir / "safekeeper").resolve()

    @property
    def api_urls(self) -> list[str]:
        urls = [u.strip().rstrip("/") for u in self.api_url.split(",") if u.strip()]
        return urls or [self.effective_api_url]

    @property
    def effective_api_url(self) -> str:
        if self.api_url:
            return self.api_url.split(",")[0].strip().rstrip("/")
        host, port = split_listen(self.api_listen)
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a listen address, not a bind
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    @property
    def proxy_host(self) -> str:
        if self.proxy_public_host:
            return self.proxy_public_host
        host, _ = split_listen(self.proxy_listen)
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104

    @property
    def proxy_port(self) -> int:
        return split_listen(self.proxy_listen)[1]


def split_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Convert a file or environment value to the field's declared type."""
    if name.lower().endswith("plans"):
        return parse_plans(name, raw)
    target = annotation
    origin = typing.get_origin(annotation)
    if origin is list:
        # A TOML array, or comma-separated in the environment.
        items = raw if isinstance(raw, list) else str(raw).split(",")
        return [str(item).strip() for item in items if str(item).strip()]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or raw == "":
            return None
        target = args[0]
    try:
        if target is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if target is int:
            if isinstance(raw, bool):
                raise ValueError("not an integer")
            return int(raw)
        if target is float:
            return float(raw)
        if target is Path:
            return Path(str(raw)).expanduser()
        if target is str:
            if not isinstance(raw, str | int | float):
                raise ValueError("not a string")
            return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {exc}") from exc
    raise ConfigError(f"setting {name}: unsupported type {annotation!r}")


def load_settings(
    *,
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, an optional TOML file and the environment.

    ``overrides`` (command-line options) win over everything. Unknown keys in the file are
    an error, so a typo does not silently fall back to a default.
    """
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(Settings)
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    path = config_file or env.get(f"{ENV_PREFIX}CONFIG") or None
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        data = data.get("selkie", data)
        for key, raw in data.items():
            if key not in fields:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(key, raw, hints[key])

    for name, names in AWS_ENV.items():
        for env_name in names:
            if env.get(env_name):
                values[name] = env[env_name]
                break

    for name in fields:
        env_name = f"{ENV_PREFIX}{name.upper()}"
        if env_name in env:
            values[name] = _coerce(env_name, env[env_name], hints[name])

    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key] = _coerce(key, raw, hints[key])

    settings = Settings(**values)
    split_listen(settings.api_listen)
    split_listen(settings.proxy_listen)
    if settings.internal_listen:
        split_listen(settings.internal_listen)
    split_listen(settings.safekeeper_api_listen)
    if settings.safekeeper_url and not settings.internal_token:
        raise ConfigError("safekeeper_url needs internal_token (the safekeeper's API asks it)")
    if settings.default_plan not in settings.plans:
        raise ConfigError(
            f"default_plan {settings.default_plan!r} is not one of the plans: "
            + ", ".join(sorted(settings.plans))
        )
    if settings.compute_driver not in ("local", "kubernetes"):
        raise ConfigError(
            f"compute_driver must be 'local' or 'kubernetes', not {settings.compute_driver!r}"
        )
    if settings.safekeeper_follow not in ("auto", "tcp"):
        raise ConfigError(
            f"safekeeper_follow must be 'auto' or 'tcp', not {settings.safekeeper_follow!r}"
        )
    if settings.proxy_relay not in ("auto", "c", "python"):
        raise ConfigError(
            f"proxy_relay must be 'auto', 'c' or 'python', not {settings.proxy_relay!r}"
        )
    try:
        eventloop.resolve(settings.event_loop)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.metering_interval <= 0:
        raise ConfigError("metering_interval must be positive")
    token = settings.internal_token
    if token and (len(token) < INTERNAL_TOKEN_MIN or "CHANGE-ME" in token):
        # It carries role hashes between replicas: a guessable one gives them away.
        raise ConfigError(
            f"internal_token must be a random string of at least {INTERNAL_TOKEN_MIN} "
            "characters (not the example from deploy/), e.g. from `openssl rand -hex 32`"
        )
    if settings.archive_enabled and not settings.effective_archive_url.startswith(
        ("file:///", "s3://")
    ):
        raise ConfigError(
            f"archive_url {settings.archive_url!r} must be file:///abs/path, "
            "s3://bucket/prefix or off"
        )
    if settings.warm_suspend_seconds < 0 or settings.warm_suspend_memory < 0:
        raise ConfigError("warm_suspend_seconds and warm_suspend_memory must not be negative")
    if settings.base_image_interval <= 0 or settings.base_image_log_bytes <= 0:
        raise ConfigError("base_image_interval and base_image_log_bytes must be positive")
    return settings


# Settings whose values `selkie config` never prints.
SECRET_SETTINGS = frozenset(
    {"api_key", "internal_token", "safekeeper_key", "s3_secret_access_key", "s3_session_token"}
)


def settings_table(settings: Settings | None = None) -> list[tuple[str, str, str]]:
    """(environment name, default, field name) of every setting, for the README's check and
    `selkie config`; with ``settings``, the third column is its value there (secrets and a
    database URL's password hidden)."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else ""
        if f.name == "plans":
            default = "(a built-in example plan, 'default')"
        third = f.name if settings is None else _shown(f.name, getattr(settings, f.name))
        rows.append((f"{ENV_PREFIX}{f.name.upper()}", str(default), third))
    return rows


def _shown(name: str, value: Any) -> str:
    if name in SECRET_SETTINGS:
        return "(set)" if value else ""
    if name == "plans":
        return ", ".join(sorted(value))
    text = str(value)
    if name == "database_url" and "@" in text and "://" in text:
        scheme, rest = text.split("://", 1)
        who, where = rest.rsplit("@", 1)
        return f"{scheme}://{who.split(':', 1)[0]}:***@{where}" if ":" in who else text
    return text


__all__ = ["Plan", "Settings", "load_settings", "settings_table", "split_listen"]
