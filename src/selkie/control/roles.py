"""Roles of a branch: created with a generated password (shown once; only its hash is
stored), listed, deleted, their passwords reset."""

from __future__ import annotations

import builtins
import dataclasses

from sqlalchemy import select
from sqlalchemy.orm import Session

from selkie import model
from selkie.control.base import ServiceBase
from selkie.control.rules import mark_dropped
from selkie.errors import Conflict, NotFound
from selkie.model import Principal, utcnow
from selkie.store import convert
from selkie.store.tables import DatabaseRow, RoleRow


class RoleService(ServiceBase):
    def _role_row(self, s: Session, branch_id: str, name: str) -> RoleRow:
        row = s.execute(
            select(RoleRow).where(RoleRow.branch_id == branch_id).where(RoleRow.name == name)
        ).scalar()
        if row is None:
            raise NotFound(f"role {name} not found on branch {branch_id}")
        return row

    def create(
        self, who: Principal, project_id: str, branch_id: str, *, name: str
    ) -> tuple[model.Role, builtins.list[model.Operation]]:
        model.validate_role_name(name)
        password = model.new_password()
        with self.store.write() as s:
            self.branch_row(s, who, project_id, branch_id)
            clash = s.execute(
                select(RoleRow.id).where(RoleRow.branch_id == branch_id).where(RoleRow.name == name)
            ).first()
            if clash is not None:
                raise Conflict(f"role {name} already exists on branch {branch_id}")
            row = RoleRow(
                branch_id=branch_id,
                name=name,
                password_hash=model.mysql_native_hash(password),
                protected=False,
            )
            s.add(row)
            mark_dropped(s, branch_id, "role", name, dropped=False)
            s.flush()
            ops = self.apply_config(s, project_id, branch_id, {"create_role": name})
            return dataclasses.replace(convert.role(row), password=password), ops

    def list(self, who: Principal, project_id: str, branch_id: str) -> builtins.list[model.Role]:
        with self.store.read() as s:
            self.branch_row(s, who, project_id, branch_id)
            rows = s.execute(
                select(RoleRow).where(RoleRow.branch_id == branch_id).order_by(RoleRow.name)
            ).scalars()
            return [convert.role(r) for r in rows]

    def get(self, who: Principal, project_id: str, branch_id: str, name: str) -> model.Role:
        with self.store.read() as s:
            self.branch_row(s, who, project_id, branch_id)
            return convert.role(self._role_row(s, branch_id, name))

    def delete(
        self, who: Principal, project_id: str, branch_id: str, name: str
    ) -> tuple[model.Role, builtins.list[model.Operation]]:
        with self.store.write() as s:
            self.branch_row(s, who, project_id, branch_id)
            row = self._role_row(s, branch_id, name)
            if row.protected:
                raise Conflict(f"role {name} is protected")
            owned = s.execute(
                select(DatabaseRow.name)
                .where(DatabaseRow.branch_id == branch_id)
                .where(DatabaseRow.owner_name == name)
            ).scalars()
            owned_names = sorted(owned)
            if owned_names:
                raise Conflict(
                    f"role {name} owns databases {', '.join(owned_names)}; delete them first"
                )
            role = convert.role(row)
            s.delete(row)
            mark_dropped(s, branch_id, "role", name, dropped=True)
            s.flush()
            return role, self.apply_config(s, project_id, branch_id, {"drop_role": name})

    def reset_password(
        self, who: Principal, project_id: str, branch_id: str, name: str
    ) -> tuple[model.Role, builtins.list[model.Operation]]:
        password = model.new_password()
        with self.store.write() as s:
            self.branch_row(s, who, project_id, branch_id)
            row = self._role_row(s, branch_id, name)
            row.password_hash = model.mysql_native_hash(password)
            row.updated_at = utcnow()
            s.flush()
            ops = self.apply_config(s, project_id, branch_id, {"alter_role": name})
            return dataclasses.replace(convert.role(row), password=password), ops
