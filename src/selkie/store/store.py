"""The state store: one SQLAlchemy engine over SQLite (embedded) or PostgreSQL (scale-out).

Callers work inside :meth:`Store.read` or :meth:`Store.write` blocks. On SQLite a write block
takes the database's write lock up front (``BEGIN IMMEDIATE``), so two writers queue on the
busy timeout instead of deadlocking on a lock upgrade; readers never wait thanks to WAL.

Every state change of an endpoint goes through :meth:`Store.transition_endpoint`, a
compare-and-set on (state, generation): the caller states what it believes the row to be, and
the update happens only if that is still true. Whatever else the transition implies (a usage
event, an operation) is written in the same transaction, so it happens exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, create_engine, event, select, tuple_, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

from selkie.errors import Conflict, InvalidInput, StoreError
from selkie.model import EndpointState, utcnow
from selkie.store.tables import Base, EndpointRow, MetaRow, UsageEventRow

log = logging.getLogger(__name__)

T = TypeVar("T")
# Set in session.info by whoever queues an operation; see Store.on_operations_queued.
QUEUED_KEY = "selkie_operations_queued"
_MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Usage:
    """A usage event to write with a transition: the compute became billable ("start"),
    changed size ("resize") or stopped being billable ("stop") at ``at``, at ``cu``."""

    kind: str
    at: datetime
    cu: float
    project_id: str


@dataclass(frozen=True)
class Page:
    """One page of a list, and the cursor that fetches the next (None at the end)."""

    items: list[Any]
    cursor: str | None


def _encode_cursor(created_at: datetime, key: str | int) -> str:
    raw = json.dumps([created_at.isoformat(), key]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, key = json.loads(raw)
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None or not isinstance(key, str | int):
            raise ValueError("bad cursor")
        return when, key
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned") from exc


class Store:
    """The state store. Thread-safe; one per process."""

    def __init__(self, url: str, *, migrate: bool = True, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        # Whether several control planes may work on this store at once (PostgreSQL); an
        # SQLite store belongs to one process.
        self.shared = self.dialect == "postgresql"
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            }
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (sa_exc.ArgumentError, ImportError) as exc:
            raise StoreError(f"cannot use database URL {parsed!r}: {exc}") from exc
        if self.dialect == "sqlite":
            self._install_sqlite_hooks(self.engine)
        self._writer = self.engine.execution_options(selkie_write=True)
        # Called (from whichever thread committed) after a commit that queued operations.
        self.on_operations_queued: list[Callable[[], None]] = []
        if migrate:
            self.migrate()

    @staticmethod
    def _install_sqlite_hooks(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get("selkie_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    # --- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent, safe to race)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        try:
            with self.engine.connect() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except sa_exc.OperationalError as exc:
            raise StoreError(f"cannot reach the state store: {exc.orig}") from exc

    def create_all_for_tests(self) -> None:
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- transactions ----------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._session(self.engine) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write transaction, committed when the block ends without an exception."""
        with self._session(self._writer) as session:
            yield session

    @contextmanager
    def _session(self, bind: Engine) -> Iterator[Session]:
        session = Session(bind=bind, expire_on_commit=False, autoflush=True)
        try:
            with session.begin():
                yield session
            if session.info.get(QUEUED_KEY):
                for callback in self.on_operations_queued:
                    callback()
        except sa_exc.IntegrityError as exc:
            raise Conflict(f"conflicts with an existing object: {_short(exc)}") from exc
        except sa_exc.OperationalError as exc:
            raise StoreError(f"state store error: {_short(exc)}") from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreError(f"lost the state store connection: {_short(exc)}") from exc
            raise
        finally:
            session.close()

    # --- compare-and-set -------------------------------------------------------------------

    @staticmethod
    def transition_endpoint(
        session: Session,
        endpoint_id: str,
        *,
        expected_state: EndpointState | Iterable[EndpointState],
        expected_generation: int | None,
        new_state: EndpointState,
        usage: Usage | None = None,
        **fields: Any,
    ) -> int | None:
        """Move an endpoint to ``new_state`` if it still is in ``expected_state`` (and, when
        given, at ``expected_generation``). Returns the new generation, or None when the row
        changed under the caller: nothing is written then, and the caller re-reads and decides
        again. ``fields`` are other columns to set in the same update; ``usage`` is written in
        the same transaction, only if the transition happens.
        """
        states = (
            [expected_state] if isinstance(expected_state, EndpointState) else list(expected_state)
        )
        stmt = (
            update(EndpointRow)
            .where(EndpointRow.id == endpoint_id)
            .where(EndpointRow.current_state.in_([s.value for s in states]))
        )
        if expected_generation is not None:
            stmt = stmt.where(EndpointRow.generation == expected_generation)
        values = {
            "current_state": new_state.value,
            "generation": EndpointRow.generation + 1,
            "updated_at": utcnow(),
            # Only a running compute has a size.
            **({} if new_state is EndpointState.ACTIVE else {"current_cu": None}),
            **fields,
        }
        result = session.execute(
            stmt.values(**values)
            .returning(EndpointRow.generation)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        if row is None:
            return None
        if usage is not None:
            session.add(
                UsageEventRow(
                    endpoint_id=endpoint_id,
                    project_id=usage.project_id,
                    kind=usage.kind,
                    at=usage.at,
                    cu=usage.cu,
                    generation=int(row[0]),
                )
            )
        return int(row[0])

    # --- pagination ------------------------------------------------------------------------

    @staticmethod
    def page(
        session: Session,
        stmt: Select[Any],
        *,
        created_col: Any,
        key_col: Any,
        cursor: str | None,
        limit: int,
    ) -> Page:
        """Keyset pagination ordered by (created_at, key): stable under inserts."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be 1..1000")
        if cursor:
            when, key = _decode_cursor(cursor)
            stmt = stmt.where(tuple_(created_col, key_col) > tuple_(when, key))
        rows: Sequence[Any] = (
            session.execute(stmt.order_by(created_col, key_col).limit(limit + 1)).scalars().all()
        )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = _encode_cursor(last.created_at, getattr(last, key_col.key))
        return Page(items=list(rows), cursor=next_cursor)

    # --- installation facts ----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self.read() as s:
            row = s.get(MetaRow, key)
            return row.value if row else None

    @staticmethod
    def set_meta(session: Session, key: str, value: str) -> None:
        row = session.get(MetaRow, key)
        if row is None:
            session.add(MetaRow(key=key, value=value))
        else:
            row.value = value


async def write_in_thread(fn: Callable[..., T], *args: Any, attempts: int = 3) -> T:
    """Run a blocking store write off the event loop, again when it lost a race to another
    writer (Conflict: two first inserts of one key, say), up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        try:
            return await asyncio.to_thread(fn, *args)
        except Conflict:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _short(exc: sa_exc.DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)


def select_live_endpoints() -> Select[Any]:
    return select(EndpointRow).where(EndpointRow.current_state != EndpointState.DELETED.value)
