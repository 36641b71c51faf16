"""Databases of a branch, each owned by one of its roles."""

from __future__ import annotations

import builtins

from sqlalchemy import select
from sqlalchemy.orm import Session

from selkie import model
from selkie.control.base import ServiceBase
from selkie.control.rules import mark_dropped
from selkie.errors import Conflict, InvalidInput, NotFound
from selkie.model import Principal
from selkie.store import convert
from selkie.store.tables import DatabaseRow, RoleRow


class DatabaseService(ServiceBase):
    def _db_row(self, s: Session, branch_id: str, name: str) -> DatabaseRow:
        row = s.execute(
            select(DatabaseRow)
            .where(DatabaseRow.branch_id == branch_id)
            .where(DatabaseRow.name == name)
        ).scalar()
        if row is None:
            raise NotFound(f"database {name} not found on branch {branch_id}")
        return row

    def create(
        self, who: Principal, project_id: str, branch_id: str, *, name: str, owner_name: str
    ) -> tuple[model.Database, builtins.list[model.Operation]]:
        model.validate_database_name(name)
        with self.store.write() as s:
            self.branch_row(s, who, project_id, branch_id)
            owner = s.execute(
                select(RoleRow.id)
                .where(RoleRow.branch_id == branch_id)
                .where(RoleRow.name == owner_name)
            ).first()
            if owner is None:
                raise InvalidInput(f"owner role {owner_name!r} does not exist on this branch")
            clash = s.execute(
                select(DatabaseRow.id)
                .where(DatabaseRow.branch_id == branch_id)
                .where(DatabaseRow.name == name)
            ).first()
            if clash is not None:
                raise Conflict(f"database {name} already exists on branch {branch_id}")
            row = DatabaseRow(branch_id=branch_id, name=name, owner_name=owner_name)
            s.add(row)
            mark_dropped(s, branch_id, "database", name, dropped=False)
            s.flush()
            ops = self.apply_config(s, project_id, branch_id, {"create_database": name})
            return convert.database(row), ops

    def list(
        self, who: Principal, project_id: str, branch_id: str
    ) -> builtins.list[model.Database]:
        with self.store.read() as s:
            self.branch_row(s, who, project_id, branch_id)
            rows = s.execute(
                select(DatabaseRow)
                .where(DatabaseRow.branch_id == branch_id)
                .order_by(DatabaseRow.name)
            ).scalars()
            return [convert.database(r) for r in rows]

    def get(self, who: Principal, project_id: str, branch_id: str, name: str) -> model.Database:
        with self.store.read() as s:
            self.branch_row(s, who, project_id, branch_id)
            return convert.database(self._db_row(s, branch_id, name))

    def delete(
        self, who: Principal, project_id: str, branch_id: str, name: str
    ) -> tuple[model.Database, builtins.list[model.Operation]]:
        with self.store.write() as s:
            self.branch_row(s, who, project_id, branch_id)
            row = self._db_row(s, branch_id, name)
            db = convert.database(row)
            s.delete(row)
            mark_dropped(s, branch_id, "database", name, dropped=True)
            s.flush()
            ops = self.apply_config(s, project_id, branch_id, {"drop_database": name})
            return db, ops
