"""Domain types shared by every layer: ids, enums, validation rules, snapshots.

Snapshots are frozen dataclasses: the store hands them out, nothing mutates them. Field
names follow Neon's v2 API where Neon has the field, so Neon users feel at home.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from selkie.errors import InvalidInput


def utcnow() -> datetime:
    return datetime.now(UTC)


class EndpointState(StrEnum):
    INIT = "init"
    STARTING = "starting"
    ACTIVE = "active"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETED = "deleted"


class SuspendTier(StrEnum):
    """How a suspended endpoint sleeps: ``warm`` frozen with its memory (resumes in about a
    millisecond), ``cold`` stopped (resumes with a server start)."""

    WARM = "warm"
    COLD = "cold"


class EndpointType(StrEnum):
    READ_WRITE = "read_write"
    READ_ONLY = "read_only"


class PoolerMode(StrEnum):
    SESSION = "session"
    TRANSACTION = "transaction"


class BranchState(StrEnum):
    INIT = "init"
    READY = "ready"


class OperationAction(StrEnum):
    CREATE_TIMELINE = "create_timeline"
    CREATE_BRANCH = "create_branch"
    START_COMPUTE = "start_compute"
    SUSPEND_COMPUTE = "suspend_compute"
    RESTART_COMPUTE = "restart_compute"
    RESTORE_BRANCH = "restore_branch"
    APPLY_CONFIG = "apply_config"
    DELETE_ENDPOINT = "delete_endpoint"
    DELETE_TIMELINE = "delete_timeline"
    DELETE_PROJECT = "delete_project"
    # Written by the autoscaler when it resizes a compute (never queued).
    AUTOSCALE = "autoscale"
    # A branch deleted by the leader at its expires_at (run as DELETE_TIMELINE is).
    EXPIRE_BRANCH = "expire_branch"
    # Written by the health checks when a compute that answered none of them is marked
    # failed and stopped (never queued).
    HEALTH_CHECK_FAILED = "health_check_failed"


class EndpointHealth(StrEnum):
    """What the health checks last observed of an endpoint's compute: ``healthy`` (it
    answered), ``unhealthy`` (it did not, or they failed it), ``unknown`` (no compute, or
    none checked since it started)."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class OperationStatus(StrEnum):
    SCHEDULING = "scheduling"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in (
            OperationStatus.FINISHED,
            OperationStatus.FAILED,
            OperationStatus.CANCELLED,
            OperationStatus.SKIPPED,
        )


class StorageMode(StrEnum):
    LOCAL = "local"
    PAGESERVER = "pageserver"


class Durability(StrEnum):
    """When a commit is acknowledged to the client: ``async`` once the compute has it on its
    disk (the archive follows within about a second); ``sync`` once the safekeeper has
    fsynced it too (semi-synchronous replication)."""

    ASYNC = "async"
    SYNC = "sync"


# --- identifiers ---------------------------------------------------------------------------

_ADJECTIVES = (
    "quiet autumn billowing bitter black blue bold broad calm cold cool crimson curly damp "
    "dark dawn delicate divine dry empty falling fancy flat floral fragrant frosty gentle "
    "green hidden holy icy jolly late lingering little lively long lucky misty morning "
    "muddy nameless noisy odd old orange patient plain polished proud purple red restless "
    "rough round royal shiny shy silent small snowy soft solitary sparkling spring square "
    "steep still summer super sweet throbbing tight tiny twilight wandering weathered white "
    "wild winter wispy withered yellow young"
).split()
_NOUNS = (
    "river art band bar base bird block boat bonus bread breeze brook bush butterfly cake "
    "cell cherry cloud credit darkness dawn dew disk dream dust feather field fire firefly "
    "flower fog forest frog frost glade glitter grass hall hat haze heart hill king lab "
    "lake leaf limit math meadow mode moon morning mountain mouse mud night paper pine "
    "poetry pond queen rain recipe resonance rice rose sea shadow shape silence sky smoke "
    "snow snowflake sound star sun sunset surf term thunder tooth tree truth union unit "
    "violet voice water waterfall wave wildflower wind wood"
).split()


def new_id(prefix: str = "") -> str:
    """A readable id such as ``ep-quiet-river-123456`` (Neon's shape)."""
    number = secrets.randbelow(900000) + 100000
    word = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{number}"
    return f"{prefix}-{word}" if prefix else word


def new_password(length: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def mysql_native_hash(password: str) -> str:
    """MariaDB's stored form of a ``mysql_native_password``: ``*`` + HEX(SHA1(SHA1(pw)))."""
    stage1 = hashlib.sha1(password.encode("utf-8")).digest()  # noqa: S324 - the protocol's hash
    return "*" + hashlib.sha1(stage1).hexdigest().upper()  # noqa: S324


def hash_api_key(key: str) -> str:
    """API keys are 256-bit random tokens, so one SHA-256 is a safe at-rest form."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return "selkie_" + secrets.token_urlsafe(32)


# --- validation ----------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
_DB_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$]{0,63}$")
RESERVED_ROLES = frozenset({"root", "mysql", "mariadb.sys", "selkie_admin", "public", "none"})
RESERVED_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
SUSPEND_TIMEOUT_MAX = 604800
HISTORY_RETENTION_MAX = 30 * 86400
CU_MIN, CU_MAX = 0.25, 8.0


def validate_name(kind: str, value: str) -> str:
    """Project, branch and organization names: 1-64 printable characters."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidInput(
            f"{kind} name must be 1-64 characters of letters, digits, space, '_', '.', '-', "
            f"starting with a letter or digit; got {value!r}"
        )
    return value


def validate_role_name(value: str) -> str:
    if not isinstance(value, str) or not _ROLE_RE.match(value):
        raise InvalidInput(
            "role name must be 1-32 characters of letters, digits and '_', "
            f"not starting with a digit; got {value!r}"
        )
    # The OS user running Selkie has an all-privilege unix_socket account on every compute
    # (Selkie's admin access): a role of that name would log in as it over the socket.
    if value.lower() in RESERVED_ROLES or value.lower() == getpass.getuser().lower():
        raise InvalidInput(f"role name {value!r} is reserved")
    return value


def validate_database_name(value: str) -> str:
    if not isinstance(value, str) or not _DB_RE.match(value):
        raise InvalidInput(
            f"database name must be 1-64 characters of letters, digits, '_' and '$'; got {value!r}"
        )
    if value.lower() in RESERVED_DATABASES:
        raise InvalidInput(f"database name {value!r} is reserved")
    return value


def validate_suspend_timeout(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("suspend_timeout_seconds must be an integer")
    if value == 0:
        # Neon's 0 means "the default"; keep that meaning.
        return 300
    if value != -1 and not 1 <= value <= SUSPEND_TIMEOUT_MAX:
        raise InvalidInput(
            f"suspend_timeout_seconds must be -1 (never) or 1..{SUSPEND_TIMEOUT_MAX}; got {value}"
        )
    return value


def validate_cu(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a number")
    if not CU_MIN <= value <= CU_MAX or (value * 4) != int(value * 4):
        raise InvalidInput(f"{name} must be {CU_MIN}..{CU_MAX} in steps of 0.25; got {value}")
    return float(value)


def validate_cu_range(min_cu: float, max_cu: float) -> tuple[float, float]:
    validate_cu("autoscaling_limit_min_cu", min_cu)
    validate_cu("autoscaling_limit_max_cu", max_cu)
    if min_cu > max_cu:
        raise InvalidInput(
            f"autoscaling_limit_min_cu ({min_cu}) must not exceed "
            f"autoscaling_limit_max_cu ({max_cu})"
        )
    return float(min_cu), float(max_cu)


# --- snapshots -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Organization:
    id: str
    name: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    id: int
    name: str
    org_id: str
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: an API key's organization, and whether it is an admin key."""

    key_id: int
    org_id: str
    admin: bool

    def sees(self, org_id: str) -> bool:
        return self.admin or org_id == self.org_id


@dataclass(frozen=True, kw_only=True)
class EndpointSettings:
    autoscaling_limit_min_cu: float = 0.25
    autoscaling_limit_max_cu: float = 0.25
    suspend_timeout_seconds: int = 300


@dataclass(frozen=True, kw_only=True)
class ProjectSettings:
    require_tls: bool = False
    storage_mode: StorageMode = StorageMode.LOCAL
    page_server_address: str | None = None
    page_server_port: int | None = None
    safekeeper_url: str | None = None
    # Quotas; None means unlimited.
    max_active_endpoints: int | None = None
    max_cu: float | None = None
    compute_time_limit_seconds: int | None = None  # CU-seconds per calendar month
    storage_limit_bytes: int | None = None
    # The billing plan (one configured in `plans`); None: the configured default plan.
    plan: str | None = None
    durability: Durability = Durability.ASYNC
    # How far back branches can be restored (Neon's name and default: one day); 0: no
    # history beyond the latest state.
    history_retention_seconds: int = 86400


@dataclass(frozen=True, kw_only=True)
class Project:
    id: str
    org_id: str
    name: str
    region_id: str
    mariadb_version: str
    proxy_host: str
    default_endpoint_settings: EndpointSettings
    settings: ProjectSettings
    store_passwords: bool = False
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Branch:
    id: str
    project_id: str
    parent_id: str | None
    name: str
    default: bool
    primary: bool
    current_state: BranchState
    created_at: datetime
    updated_at: datetime
    # The parent's point this branch was made from: a time, and a GTID position.
    parent_timestamp: datetime | None = None
    parent_lsn: str | None = None
    # Cannot be deleted or restored over while set.
    protected: bool = False
    # Bytes of its data as last measured (None: not measured yet).
    logical_size: int | None = None
    # When it is deleted with its endpoints (None: never).
    expires_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    id: str
    project_id: str
    branch_id: str
    type: EndpointType
    host: str
    current_state: EndpointState
    pending_state: EndpointState | None
    generation: int
    autoscaling_limit_min_cu: float
    autoscaling_limit_max_cu: float
    # The size of its running compute now (None while suspended).
    current_cu: float | None
    suspend_timeout_seconds: int
    pooler_enabled: bool
    pooler_mode: PoolerMode
    disabled: bool
    last_active: datetime | None
    started_at: datetime | None
    suspended_at: datetime | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    # While suspended: warm (frozen) or cold (stopped); None otherwise.
    suspend_tier: SuspendTier | None = None
    # While suspended: when its next scheduled EVENT is due, and the scheduler wakes it.
    next_event_at: datetime | None = None
    # A running read-only compute's replication (GET of the endpoint asks its server): the
    # last transaction it applied, and how far behind the safekeeper it is (seconds).
    replayed_lsn: str | None = None
    replication_lag_seconds: float | None = None
    # What the leader's health checks observed of this compute (control/health.py): when
    # they last asked, and why the last check failed (null after one that passed).
    health: EndpointHealth = EndpointHealth.UNKNOWN
    health_checked_at: datetime | None = None
    health_error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Role:
    branch_id: str
    name: str
    protected: bool
    created_at: datetime
    updated_at: datetime
    # Only in the answers that create or reset it: the store keeps just the hash.
    password: str | None = None


@dataclass(frozen=True, kw_only=True)
class Database:
    id: int
    branch_id: str
    name: str
    owner_name: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class Operation:
    id: str
    project_id: str
    branch_id: str | None
    endpoint_id: str | None
    action: OperationAction
    status: OperationStatus
    error: str | None
    failures_count: int
    retry_at: datetime | None
    created_at: datetime
    updated_at: datetime
    total_duration_ms: int
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ConnectionParameters:
    host: str
    port: int
    user: str
    role: str
    database: str
    endpoint_id: str
    pooled: bool


@dataclass(frozen=True, kw_only=True)
class ConnectionUri:
    connection_uri: str
    connection_parameters: ConnectionParameters
