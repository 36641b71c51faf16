"""Connection strings of a project's endpoints."""

from __future__ import annotations

from sqlalchemy import select

from selkie import model
from selkie.control.base import ServiceBase
from selkie.control.branches import BranchService
from selkie.errors import NotFound
from selkie.model import (
    Principal,
)
from selkie.store.tables import (
    DatabaseRow,
    RoleRow,
)


class ConnectionService(ServiceBase):
    def uri(
        self,
        who: Principal,
        project_id: str,
        *,
        role_name: str,
        database_name: str,
        branch_id: str | None = None,
        endpoint_id: str | None = None,
        pooled: bool = False,
    ) -> model.ConnectionUri:
        """The proxy URI for a role and database. The password is not stored, so the URI
        has none: use the one shown when the role was created or its password reset."""
        with self.store.read() as s:
            self.project_row(s, who, project_id)
            if branch_id is None:
                branch = BranchService._default_branch(s, project_id)
            else:
                branch = self.branch_row(s, who, project_id, branch_id)
            endpoints = self.live_endpoints_of_branch(s, branch.id)
            if endpoint_id is not None:
                endpoints = [e for e in endpoints if e.id == endpoint_id]
            if not endpoints:
                raise NotFound(f"no endpoint found for branch {branch.id}")
            role = s.execute(
                select(RoleRow.id)
                .where(RoleRow.branch_id == branch.id)
                .where(RoleRow.name == role_name)
            ).first()
            if role is None:
                raise NotFound(f"role {role_name} not found on branch {branch.id}")
            db = s.execute(
                select(DatabaseRow.id)
                .where(DatabaseRow.branch_id == branch.id)
                .where(DatabaseRow.name == database_name)
            ).first()
            if db is None:
                raise NotFound(f"database {database_name} not found on branch {branch.id}")
            return self.connection_uri(
                endpoint_id=endpoints[0].id,
                role=role_name,
                database=database_name,
                password=None,
                pooled=pooled,
            )
