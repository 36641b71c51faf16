"""State store: SQLAlchemy tables, transactions, compare-and-set, Alembic migrations."""

from selkie.store.store import Page, Store, Usage

__all__ = ["Page", "Store", "Usage"]
