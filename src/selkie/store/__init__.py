"""State store: SQLAlchemy tables, transactions, compare-and-set, Alembic migrations."""

from selkie.store.store import Page, Store

__all__ = ["Page", "Store"]
