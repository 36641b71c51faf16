"""Projects: create (with their first branch, endpoint, owner role and database), list,
get, update, delete."""

from __future__ import annotations

import builtins
import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selkie import model
from selkie.control.base import Created, ServiceBase, check_org_limit
from selkie.control.operator_settings import check_addresses, check_operator_settings
from selkie.control.rules import (
    cancel_waiting,
    mark_endpoint_deleted,
    new_endpoint_row,
    settings_dict,
    validate_endpoint_settings,
    validate_project_settings,
)
from selkie.errors import InvalidInput, NotFound
from selkie.model import (
    BranchState,
    EndpointState,
    OperationAction,
    Principal,
    utcnow,
)
from selkie.store import Page, Store, convert
from selkie.store.tables import (
    BranchRow,
    DatabaseRow,
    EndpointRow,
    OperationRow,
    OrganizationRow,
    ProjectRow,
    RoleRow,
)

MARIADB_VERSION = "10.11"
DEFAULT_BRANCH = "main"
DEFAULT_DATABASE = "selkiedb"
DEFAULT_ROLE = "selkiedb_owner"


@dataclass(frozen=True, kw_only=True)
class BranchSpec:
    name: str | None = None
    role_name: str | None = None
    database_name: str | None = None


class ProjectService(ServiceBase):
    def create(
        self,
        who: Principal,
        *,
        name: str | None = None,
        org_id: str | None = None,
        region_id: str | None = None,
        default_endpoint_settings: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        branch: BranchSpec | None = None,
    ) -> Created:
        """A project with its default branch, a read_write endpoint, an owner role with a
        generated password and a default database. The password is in the answer only."""
        target_org = org_id or who.org_id
        if not who.sees(target_org):
            raise NotFound(f"organization {target_org} not found")
        if region_id is not None and region_id != self.settings.region_id:
            raise InvalidInput(
                f"region_id {region_id!r} is not served here; use {self.settings.region_id!r}"
            )
        ep_settings = validate_endpoint_settings(default_endpoint_settings or {})
        check_operator_settings(who, settings or {}, None)
        proj_settings = validate_project_settings(settings or {}, plans=self.settings.plans)
        check_addresses(proj_settings, self.settings.storage_allowed_hosts)
        branch_name, role_name, db_name = _first_branch_names(branch or BranchSpec())
        password = model.new_password()
        project_id = model.new_id()
        model.validate_name("project", name or project_id)

        with self.store.write() as s:
            if s.get(OrganizationRow, target_org) is None:
                raise NotFound(f"organization {target_org} not found")
            check_org_limit(s, self.settings, target_org, "projects")
            prow = ProjectRow(
                id=project_id,
                org_id=target_org,
                name=name or project_id,
                region_id=self.settings.region_id,
                mariadb_version=MARIADB_VERSION,
                default_endpoint_settings=settings_dict(ep_settings),
                settings=settings_dict(proj_settings),
            )
            brow = BranchRow(
                id=model.new_id("br"),
                project_id=project_id,
                parent_id=None,
                name=branch_name,
                is_default=True,
                current_state=BranchState.INIT.value,
            )
            # No ORM relationships, so the unit of work does not order inserts by foreign
            # key: parents are flushed before their children explicitly.
            s.add(prow)
            s.flush()
            s.add(brow)
            s.flush()
            erow = new_endpoint_row(
                project_id=project_id,
                branch_id=brow.id,
                endpoint_type=model.EndpointType.READ_WRITE,
                settings=ep_settings,
            )
            rrow = RoleRow(
                branch_id=brow.id,
                name=role_name,
                password_hash=model.mysql_native_hash(password),
                protected=False,
            )
            drow = DatabaseRow(branch_id=brow.id, name=db_name, owner_name=role_name)
            s.add_all([erow, rrow, drow])
            s.flush()
            ops = [
                self.enqueue(
                    s,
                    project_id=project_id,
                    branch_id=brow.id,
                    action=OperationAction.CREATE_TIMELINE,
                )
            ]
            role = dataclasses.replace(convert.role(rrow), password=password)
            return Created(
                project=self.project_model(prow),
                branch=convert.branch(brow),
                endpoints=[self.endpoint_model(erow)],
                roles=[role],
                databases=[convert.database(drow)],
                operations=ops,
                connection_uris=[
                    self.connection_uri(
                        endpoint_id=erow.id,
                        role=role_name,
                        database=db_name,
                        password=password,
                        pooled=False,
                    )
                ],
            )

    def list(
        self,
        who: Principal,
        *,
        cursor: str | None,
        limit: int,
        org_id: str | None = None,
        search: str | None = None,
    ) -> Page:
        with self.store.read() as s:
            stmt = select(ProjectRow).where(ProjectRow.deleted_at.is_(None))
            if not who.admin:
                stmt = stmt.where(ProjectRow.org_id == who.org_id)
            if org_id:
                stmt = stmt.where(ProjectRow.org_id == org_id)
            if search:
                stmt = stmt.where(
                    (ProjectRow.name.contains(search, autoescape=True))
                    | (ProjectRow.id.contains(search, autoescape=True))
                )
            page = Store.page(
                s,
                stmt,
                created_col=ProjectRow.created_at,
                key_col=ProjectRow.id,
                cursor=cursor,
                limit=limit,
            )
            return Page([self.project_model(r) for r in page.items], page.cursor)

    def get(self, who: Principal, project_id: str) -> model.Project:
        with self.store.read() as s:
            return self.project_model(self.project_row(s, who, project_id))

    def update(
        self,
        who: Principal,
        project_id: str,
        *,
        name: str | None = None,
        default_endpoint_settings: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> tuple[model.Project, builtins.list[model.Operation]]:
        """Rename, change the settings new endpoints get or the project's settings. A new
        ``durability`` is applied to the running computes by one ``apply_config``
        operation per endpoint (a suspended one takes it at its next start or thaw)."""
        with self.store.write() as s:
            row = self.project_row(s, who, project_id)
            current = self.project_model(row)
            ops: builtins.list[model.Operation] = []
            if name is not None:
                row.name = model.validate_name("project", name)
            if default_endpoint_settings is not None:
                row.default_endpoint_settings = settings_dict(
                    validate_endpoint_settings(
                        default_endpoint_settings, current.default_endpoint_settings
                    )
                )
            if settings is not None:
                check_operator_settings(who, settings, current.settings)
                merged = validate_project_settings(
                    settings, current.settings, plans=self.settings.plans
                )
                check_addresses(merged, self.settings.storage_allowed_hosts)
                row.settings = settings_dict(merged)
                if merged.durability is not current.settings.durability:
                    ops = self._apply_durability(s, project_id, merged.durability)
            row.updated_at = utcnow()
            s.flush()
            return self.project_model(row), ops

    def _apply_durability(
        self, s: Session, project_id: str, durability: model.Durability
    ) -> builtins.list[model.Operation]:
        """One apply_config per endpoint of the project, in the transaction that changes
        the setting: every endpoint, not only the active ones, so that a compute starting
        meanwhile with the old setting gets it too (the operation waits for the start; one
        that finds no running compute does nothing)."""
        endpoints = s.execute(
            select(EndpointRow)
            .where(EndpointRow.project_id == project_id)
            .where(EndpointRow.current_state != EndpointState.DELETED.value)
            .order_by(EndpointRow.created_at, EndpointRow.id)
        ).scalars()
        return [
            self.enqueue(
                s,
                project_id=project_id,
                branch_id=e.branch_id,
                endpoint_id=e.id,
                action=OperationAction.APPLY_CONFIG,
                payload={"durability": durability.value},
            )
            for e in endpoints
        ]

    def delete(
        self, who: Principal, project_id: str
    ) -> tuple[model.Project, builtins.list[model.Operation]]:
        """Soft-delete the project, its branches and endpoints; the operations runner stops
        the computes and removes the data."""
        with self.store.write() as s:
            row = self.project_row(s, who, project_id)
            now = utcnow()
            endpoint_ids = []
            for erow in s.execute(
                select(EndpointRow).where(EndpointRow.project_id == project_id)
            ).scalars():
                if erow.current_state != EndpointState.DELETED.value:
                    mark_endpoint_deleted(erow)
                    endpoint_ids.append(erow.id)
            branch_ids = []
            for brow in s.execute(
                select(BranchRow)
                .where(BranchRow.project_id == project_id)
                .where(BranchRow.deleted_at.is_(None))
            ).scalars():
                brow.deleted_at = now
                branch_ids.append(brow.id)
            row.deleted_at = now
            cancel_waiting(s, OperationRow.project_id == project_id, "the project was deleted")
            s.flush()
            op = self.enqueue(
                s,
                project_id=project_id,
                action=OperationAction.DELETE_PROJECT,
                payload={"endpoint_ids": endpoint_ids, "branch_ids": branch_ids},
            )
            return self.project_model(row), [op]


def _first_branch_names(spec: BranchSpec) -> tuple[str, str, str]:
    """The names of a new project's branch, owner role and database, checked."""
    return (
        model.validate_name("branch", spec.name or DEFAULT_BRANCH),
        model.validate_role_name(spec.role_name or DEFAULT_ROLE),
        model.validate_database_name(spec.database_name or DEFAULT_DATABASE),
    )
