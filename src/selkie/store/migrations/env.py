"""Alembic environment: migrations run in-process on the connection Store.migrate() passes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from selkie.store.tables import Base

# An arbitrary, fixed key: control planes starting together on one PostgreSQL migrate in turn.
_MIGRATION_LOCK_KEY = 0x5E1C1E


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            connection.commit()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Selkie runs its migrations through Store.migrate()")
_run(connection)
