"""Projects and branches."""

from __future__ import annotations

import builtins
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selkie import model
from selkie.control.base import ServiceBase
from selkie.control.points import check_point
from selkie.control.rules import (
    copy_accounts,
    mark_endpoint_deleted,
    new_endpoint_row,
    settings_dict,
    validate_endpoint_settings,
    validate_endpoint_type,
    validate_project_settings,
)
from selkie.errors import Conflict, InvalidInput, NotFound
from selkie.metering import billing
from selkie.metering.billing import Invoice
from selkie.metering.usage import (
    PeriodUsage,
    month_usage,
    quota_exceeded,
    storage_bytes,
    usage_between,
)
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


@dataclass(frozen=True, kw_only=True)
class Created:
    """What creating a project or a branch made, Neon's compound answer."""

    project: model.Project
    branch: model.Branch
    endpoints: builtins.list[model.Endpoint] = field(default_factory=list)
    roles: builtins.list[model.Role] = field(default_factory=list)
    databases: builtins.list[model.Database] = field(default_factory=list)
    operations: builtins.list[model.Operation] = field(default_factory=list)
    connection_uris: builtins.list[model.ConnectionUri] = field(default_factory=list)


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
        proj_settings = validate_project_settings(settings or {}, plans=self.settings.plans)
        spec = branch or BranchSpec()
        branch_name = model.validate_name("branch", spec.name or DEFAULT_BRANCH)
        role_name = model.validate_role_name(spec.role_name or DEFAULT_ROLE)
        db_name = model.validate_database_name(spec.database_name or DEFAULT_DATABASE)
        password = model.new_password()
        project_id = model.new_id()
        model.validate_name("project", name or project_id)

        with self.store.write() as s:
            if s.get(OrganizationRow, target_org) is None:
                raise NotFound(f"organization {target_org} not found")
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
    ) -> model.Project:
        with self.store.write() as s:
            row = self.project_row(s, who, project_id)
            current = self.project_model(row)
            if name is not None:
                row.name = model.validate_name("project", name)
            if default_endpoint_settings is not None:
                row.default_endpoint_settings = settings_dict(
                    validate_endpoint_settings(
                        default_endpoint_settings, current.default_endpoint_settings
                    )
                )
            if settings is not None:
                row.settings = settings_dict(
                    validate_project_settings(settings, current.settings, plans=self.settings.plans)
                )
            row.updated_at = utcnow()
            s.flush()
            return self.project_model(row)

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
            s.flush()
            op = self.enqueue(
                s,
                project_id=project_id,
                action=OperationAction.DELETE_PROJECT,
                payload={"endpoint_ids": endpoint_ids, "branch_ids": branch_ids},
            )
            return self.project_model(row), [op]


class BranchService(ServiceBase):
    def create(
        self,
        who: Principal,
        project_id: str,
        *,
        name: str | None = None,
        parent_id: str | None = None,
        parent_timestamp: datetime | None = None,
        parent_lsn: str | None = None,
        endpoints: builtins.list[dict[str, Any]] | None = None,
    ) -> Created:
        """A branch is a copy of its parent (as it is now, or at ``parent_timestamp`` /
        ``parent_lsn``): its roles and databases come along."""
        with self.store.write() as s:
            prow = self.project_row(s, who, project_id)
            if parent_id is None:
                parent = self._default_branch(s, project_id)
            else:
                parent = self.branch_row(s, who, project_id, parent_id)
            point = None
            if parent_timestamp is not None or parent_lsn is not None:
                point = check_point(
                    s,
                    settings_archive=self.settings.archive_enabled,
                    project=prow,
                    branch=parent,
                    at=parent_timestamp,
                    lsn=parent_lsn,
                    names=("parent_timestamp", "parent_lsn"),
                    now=utcnow(),
                )
            branch_id = model.new_id("br")
            branch_name = model.validate_name("branch", name or branch_id)
            self._check_name_free(s, project_id, branch_name)
            brow = BranchRow(
                id=branch_id,
                project_id=project_id,
                parent_id=parent.id,
                name=branch_name,
                is_default=False,
                current_state=BranchState.INIT.value,
                parent_timestamp=point.at if point else None,
                parent_lsn=parent_lsn if point and point.seq is not None else None,
            )
            s.add(brow)
            s.flush()
            roles, dbs = copy_accounts(s, parent.id, branch_id)
            ops = [
                self.enqueue(
                    s,
                    project_id=project_id,
                    branch_id=branch_id,
                    action=OperationAction.CREATE_BRANCH,
                    payload={"parent_id": parent.id},
                )
            ]
            defaults = convert.endpoint_settings(prow.default_endpoint_settings)
            new_endpoints = []
            seen_rw = False
            for spec in endpoints or []:
                etype = validate_endpoint_type(spec.get("type", "read_write"))
                if seen_rw:
                    raise Conflict("a branch can have only one read_write endpoint")
                seen_rw = True
                erow = new_endpoint_row(
                    project_id=project_id,
                    branch_id=branch_id,
                    endpoint_type=etype,
                    settings=validate_endpoint_settings(
                        {k: v for k, v in spec.items() if k != "type"}, defaults
                    ),
                )
                s.add(erow)
                s.flush()
                new_endpoints.append(self.endpoint_model(erow))
            uris = []
            if new_endpoints and dbs:
                owner = dbs[0].owner_name
                uris.append(
                    self.connection_uri(
                        endpoint_id=new_endpoints[0].id,
                        role=owner,
                        database=dbs[0].name,
                        password=None,
                        pooled=False,
                    )
                )
            return Created(
                project=self.project_model(prow),
                branch=convert.branch(brow),
                endpoints=new_endpoints,
                roles=[convert.role(r) for r in roles],
                databases=[convert.database(d) for d in dbs],
                operations=ops,
                connection_uris=uris,
            )

    def list(self, who: Principal, project_id: str, *, cursor: str | None, limit: int) -> Page:
        with self.store.read() as s:
            self.project_row(s, who, project_id)
            stmt = (
                select(BranchRow)
                .where(BranchRow.project_id == project_id)
                .where(BranchRow.deleted_at.is_(None))
            )
            page = Store.page(
                s,
                stmt,
                created_col=BranchRow.created_at,
                key_col=BranchRow.id,
                cursor=cursor,
                limit=limit,
            )
            return Page([convert.branch(r) for r in page.items], page.cursor)

    def get(self, who: Principal, project_id: str, branch_id: str) -> model.Branch:
        with self.store.read() as s:
            return convert.branch(self.branch_row(s, who, project_id, branch_id))

    def update(
        self, who: Principal, project_id: str, branch_id: str, *, name: str | None = None
    ) -> model.Branch:
        with self.store.write() as s:
            row = self.branch_row(s, who, project_id, branch_id)
            if name is not None and name != row.name:
                model.validate_name("branch", name)
                self._check_name_free(s, project_id, name)
                row.name = name
                row.updated_at = utcnow()
            s.flush()
            return convert.branch(row)

    def delete(
        self, who: Principal, project_id: str, branch_id: str
    ) -> tuple[model.Branch, builtins.list[model.Operation]]:
        with self.store.write() as s:
            row = self.branch_row(s, who, project_id, branch_id)
            if row.is_default:
                raise Conflict("the default branch cannot be deleted; delete the project instead")
            children = s.execute(
                select(BranchRow.id)
                .where(BranchRow.parent_id == branch_id)
                .where(BranchRow.deleted_at.is_(None))
            ).first()
            if children is not None:
                raise Conflict(f"branch {branch_id} has child branches; delete them first")
            endpoint_ids = []
            for erow in self.live_endpoints_of_branch(s, branch_id):
                mark_endpoint_deleted(erow)
                endpoint_ids.append(erow.id)
            row.deleted_at = utcnow()
            s.flush()
            op = self.enqueue(
                s,
                project_id=project_id,
                branch_id=branch_id,
                action=OperationAction.DELETE_TIMELINE,
                payload={"endpoint_ids": endpoint_ids},
            )
            return convert.branch(row), [op]

    @staticmethod
    def _default_branch(s: Session, project_id: str) -> BranchRow:
        row = s.execute(
            select(BranchRow)
            .where(BranchRow.project_id == project_id)
            .where(BranchRow.is_default.is_(True))
            .where(BranchRow.deleted_at.is_(None))
        ).scalar()
        if row is None:
            raise NotFound(f"project {project_id} has no default branch")
        return row

    @staticmethod
    def _check_name_free(s: Session, project_id: str, name: str) -> None:
        clash = s.execute(
            select(BranchRow.id)
            .where(BranchRow.project_id == project_id)
            .where(BranchRow.name == name)
            .where(BranchRow.deleted_at.is_(None))
        ).first()
        if clash is not None:
            raise Conflict(f"a branch named {name!r} already exists in project {project_id}")


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


@dataclass(frozen=True, kw_only=True)
class CurrentUsage:
    project_id: str
    plan: str
    usage: PeriodUsage
    storage_bytes: int
    compute_time_limit_seconds: int | None
    storage_limit_bytes: int | None
    quota_exceeded: builtins.list[str]


class ConsumptionService(ServiceBase):
    def history(
        self,
        who: Principal,
        *,
        start: datetime,
        end: datetime,
        granularity: str,
        project_ids: builtins.list[str] | None = None,
    ) -> builtins.list[tuple[str, builtins.list[PeriodUsage]]]:
        """Compute usage per project and period, from the usage events (no compute woken)."""
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInput("'from' and 'to' need a timezone (e.g. 2026-11-28T00:00:00Z)")
        with self.store.read() as s:
            stmt = select(ProjectRow.id).where(ProjectRow.deleted_at.is_(None))
            if not who.admin:
                stmt = stmt.where(ProjectRow.org_id == who.org_id)
            if project_ids:
                stmt = stmt.where(ProjectRow.id.in_(project_ids))
            ids = builtins.list(s.execute(stmt.order_by(ProjectRow.id)).scalars())
        usage = usage_between(self.store, ids, start, end, granularity, utcnow())
        return [(pid, usage[pid]) for pid in ids]

    def current(self, who: Principal, project_id: str) -> CurrentUsage:
        """The project's usage this calendar month so far, its storage now, and whether its
        quotas allow computes to run."""
        with self.store.read() as s:
            settings = convert.project_settings(self.project_row(s, who, project_id).settings)
        now = utcnow()
        return CurrentUsage(
            project_id=project_id,
            plan=settings.plan or self.settings.default_plan,
            usage=month_usage(self.store, project_id, now),
            storage_bytes=storage_bytes(self.store, project_id),
            compute_time_limit_seconds=settings.compute_time_limit_seconds,
            storage_limit_bytes=settings.storage_limit_bytes,
            quota_exceeded=quota_exceeded(self.store, project_id, settings, now),
        )

    def invoice(self, who: Principal, project_id: str, period: str) -> Invoice:
        """The project's invoice for a calendar month (``YYYY-MM``), priced by its plan."""
        start, end = billing.parse_period(period)
        with self.store.read() as s:
            project = self.project_row(s, who, project_id)
            settings = convert.project_settings(project.settings)
        now = utcnow()
        if start > now:
            raise InvalidInput(f"period {period} has not begun")
        plan_name = settings.plan or self.settings.default_plan
        plan = self.settings.plans.get(plan_name)
        if plan is None:
            raise InvalidInput(f"project {project_id} names plan {plan_name!r}, not configured")
        ((usage,),) = usage_between(self.store, [project_id], start, end, "monthly", now).values()
        return billing.invoice(project_id, plan, period, usage, now)
