"""The state store's tables (SQLAlchemy 2 ORM). The Alembic migrations must match these.

Timestamps are stored as UTC and always come back timezone-aware. Rows never leave the
store: :mod:`selkie.store.convert` turns them into frozen snapshots from :mod:`selkie.model`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from selkie.model import utcnow

# Stable constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that is UTC in the database and timezone-aware in Python.

    SQLite has no timezone type and hands back naive values; normalising here keeps every
    comparison in the code between aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state store; use selkie.model.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class OrganizationRow(Timestamps, Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ProjectRow(Timestamps, Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    region_id: Mapped[str] = mapped_column(String(64))
    mariadb_version: Mapped[str] = mapped_column(String(32))
    default_endpoint_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BranchRow(Timestamps, Base):
    __tablename__ = "branches"
    __table_args__ = (
        # Names are unique among live branches of a project; deleted ones keep theirs.
        Index(
            "uq_branches_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    name: Mapped[str] = mapped_column(String(64))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # Cannot be deleted or restored over while set.
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Bytes of its data as last measured (the meter's storage sample).
    logical_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    current_state: Mapped[str] = mapped_column(String(16))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The line of history the branch's data is on now (see TimelineRow); null until its
    # data is made.
    timeline_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The point of the parent the branch was made from (Neon's names): a time, and the
    # GTID position, e.g. 0-1-1234.
    parent_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    parent_lsn: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # When the scheduler's leader deletes the branch and its endpoints (null: never).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TimelineRow(Base):
    """One line of a branch's history in the archive: a branch gets a new timeline when it
    is created or restored. Its data began at ``start_seq`` (a GTID sequence number) at
    ``created_at``; ``ended_at`` is set when a restore replaced it (its history stays
    restorable within the retention window)."""

    __tablename__ = "timelines"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign keys: history outlives the branches it belonged to.
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    branch_id: Mapped[str] = mapped_column(String(64), index=True)
    start_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # The last position known durable (updated at suspends), for validating restore targets.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Where its data came from (a parent's or a restore source's timeline, at parent_seq).
    parent_timeline_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The timeline it replaced on its branch (a restore): the branch's history before.
    previous_timeline_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class EndpointRow(Timestamps, Base):
    __tablename__ = "endpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    branch_id: Mapped[str] = mapped_column(ForeignKey("branches.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    current_state: Mapped[str] = mapped_column(String(16), index=True)
    pending_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Bumped by every compare-and-set transition; see Store.transition_endpoint.
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    autoscaling_limit_min_cu: Mapped[float] = mapped_column(Float)
    autoscaling_limit_max_cu: Mapped[float] = mapped_column(Float)
    # The size its compute runs at now (autoscaling moves it between the limits); null
    # while no compute runs.
    current_cu: Mapped[float | None] = mapped_column(Float, nullable=True)
    suspend_timeout_seconds: Mapped[int] = mapped_column(Integer)
    pooler_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    pooler_mode: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    last_active: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the compute's next scheduled EVENT is due, read at its suspend: the scheduler
    # wakes it then (null: it has none).
    next_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # While suspended: "warm" (its compute frozen, still listening) or "cold" (stopped).
    suspend_tier: Mapped[str | None] = mapped_column(String(8), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Where the running compute listens (driver-specific), null while not running.
    compute_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # When a control plane last saw its compute running: a crash closes the open usage
    # interval here, not at restart time.
    last_seen_alive: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class EndpointHealthRow(Base):
    """What the leader's health checks last observed of an endpoint's compute, one row per
    endpoint, rewritten by each pass (control/health.py). Kept apart from ``endpoints`` so
    that a check never touches the row transitions compare-and-set (nor its updated_at)."""

    __tablename__ = "endpoint_health"
    # No foreign key: like operations, written beside the endpoint, never through it.
    endpoint_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The endpoint's generation the observation is of: a later transition makes it stale.
    generation: Mapped[int] = mapped_column(BigInteger)
    healthy: Mapped[bool] = mapped_column(Boolean)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Why the last check failed; null after one that passed.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class RoleRow(Timestamps, Base):
    __tablename__ = "roles"
    __table_args__ = (UniqueConstraint("branch_id", "name", name="uq_roles_branch_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    branch_id: Mapped[str] = mapped_column(ForeignKey("branches.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    # MariaDB's mysql_native_password form: '*' + HEX(SHA1(SHA1(password))). Never cleartext.
    password_hash: Mapped[str] = mapped_column(String(41))
    protected: Mapped[bool] = mapped_column(Boolean, default=False)


class DatabaseRow(Timestamps, Base):
    __tablename__ = "databases"
    __table_args__ = (UniqueConstraint("branch_id", "name", name="uq_databases_branch_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    branch_id: Mapped[str] = mapped_column(ForeignKey("branches.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    owner_name: Mapped[str] = mapped_column(String(32))


class DroppedNameRow(Base):
    """A role or database deleted through the API: the one thing account sync may drop
    from a compute (a name the store simply does not know is never dropped)."""

    __tablename__ = "dropped_names"
    __table_args__ = (
        UniqueConstraint("branch_id", "kind", "name", name="uq_dropped_names_branch_kind_name"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    branch_id: Mapped[str] = mapped_column(ForeignKey("branches.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "role" | "database"
    name: Mapped[str] = mapped_column(String(64))
    dropped_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OperationRow(Timestamps, Base):
    __tablename__ = "operations"
    __table_args__ = (Index("ix_operations_status_retry", "status", "retry_at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Deliberately no foreign keys: an operation outlives the objects it deletes.
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    branch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    endpoint_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failures_count: Mapped[int] = mapped_column(Integer, default=0)
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    total_duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class UsageEventRow(Base):
    """A compute starting or stopping being billable, written in the same transaction as
    the state transition that causes it (so it happens exactly once)."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_endpoint_at", "endpoint_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No foreign keys: usage outlives the endpoints it bills.
    endpoint_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    # "start" | "stop" | "resize" (the compute runs on at ``cu`` from ``at``)
    kind: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    cu: Mapped[float] = mapped_column(Float)
    generation: Mapped[int] = mapped_column(BigInteger)


class UsageHourRow(Base):
    """Metered quantities summed per hour: ``transfer`` (bytes sent to clients, per
    endpoint), ``written`` (bytes the compute wrote to its redo log, per endpoint) and
    ``storage`` (byte-seconds, per branch). Writers add to the hour's row (an upsert), each
    addition committed together with the :class:`MeterMarkRow` that says what has been
    counted, so nothing is added twice."""

    __tablename__ = "usage_hours"
    __table_args__ = (
        UniqueConstraint("subject_id", "metric", "hour", name="uq_usage_hours_subject_metric"),
        Index("ix_usage_hours_project_hour", "project_id", "hour"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(64))  # endpoint or branch id
    metric: Mapped[str] = mapped_column(String(16))
    hour: Mapped[datetime] = mapped_column(UTCDateTime)
    value: Mapped[int] = mapped_column(BigInteger)


class MeterMarkRow(Base):
    """How far a meter has counted: a proxy's cumulative bytes for an endpoint, a compute
    run's redo-log counter, a branch's last sampled size and when."""

    __tablename__ = "meter_marks"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class MetaRow(Base):
    """Small key/value facts about this installation (e.g. the default organization)."""

    __tablename__ = "selkie_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
