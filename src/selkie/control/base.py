"""What every control-plane service shares: the store, settings, scoped look-ups, operations.

Tenancy is enforced here, once: every look-up of a project goes through
:meth:`ServiceBase.project_row`, which answers NotFound for another organization's project
exactly as for one that does not exist, so a key cannot even learn that it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from selkie import model
from selkie.config import Settings
from selkie.errors import NotFound, QuotaExceeded
from selkie.model import OperationAction, OperationStatus, Principal
from selkie.store import Store, convert
from selkie.store.store import QUEUED_KEY
from selkie.store.tables import (
    ApiKeyRow,
    BranchRow,
    EndpointHealthRow,
    EndpointRow,
    OperationRow,
    ProjectRow,
)

# Operations one project may have waiting in the queue at once.
MAX_QUEUED_PER_PROJECT = 100


@dataclass(frozen=True, kw_only=True)
class Created:
    """What creating a project or a branch made, Neon's compound answer."""

    project: model.Project
    branch: model.Branch
    endpoints: list[model.Endpoint] = field(default_factory=list)
    roles: list[model.Role] = field(default_factory=list)
    databases: list[model.Database] = field(default_factory=list)
    operations: list[model.Operation] = field(default_factory=list)
    connection_uris: list[model.ConnectionUri] = field(default_factory=list)


class ServiceBase:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # --- scoped look-ups (raise NotFound) --------------------------------------------------

    def project_row(self, s: Session, who: Principal, project_id: str) -> ProjectRow:
        row = s.get(ProjectRow, project_id)
        if row is None or row.deleted_at is not None or not who.sees(row.org_id):
            raise NotFound(f"project {project_id} not found")
        return row

    def branch_row(self, s: Session, who: Principal, project_id: str, branch_id: str) -> BranchRow:
        self.project_row(s, who, project_id)
        row = s.get(BranchRow, branch_id)
        if row is None or row.project_id != project_id or row.deleted_at is not None:
            raise NotFound(f"branch {branch_id} not found in project {project_id}")
        return row

    def endpoint_row(
        self, s: Session, who: Principal, project_id: str, endpoint_id: str
    ) -> EndpointRow:
        self.project_row(s, who, project_id)
        row = s.get(EndpointRow, endpoint_id)
        if (
            row is None
            or row.project_id != project_id
            or row.current_state == model.EndpointState.DELETED.value
        ):
            raise NotFound(f"endpoint {endpoint_id} not found in project {project_id}")
        return row

    def live_endpoints_of_branch(self, s: Session, branch_id: str) -> list[EndpointRow]:
        stmt = (
            select(EndpointRow)
            .where(EndpointRow.branch_id == branch_id)
            .where(EndpointRow.current_state != model.EndpointState.DELETED.value)
            .order_by(EndpointRow.created_at, EndpointRow.id)
        )
        return list(s.execute(stmt).scalars())

    # --- snapshots -------------------------------------------------------------------------

    def project_model(self, row: ProjectRow) -> model.Project:
        return convert.project(row, proxy_host=self.settings.proxy_host)

    def endpoint_model(
        self, row: EndpointRow, health: Mapping[str, EndpointHealthRow] | None = None
    ) -> model.Endpoint:
        """The endpoint with its health checks' last observation: from ``health`` (a page's,
        read at once), else read in the row's own session."""
        if health is not None:
            observed = health.get(row.id)
        else:
            s = object_session(row)
            observed = s.get(EndpointHealthRow, row.id) if s is not None else None
        return convert.endpoint(row, domain=self.settings.proxy_domain, health=observed)

    # --- operations ------------------------------------------------------------------------

    @staticmethod
    def enqueue(
        s: Session,
        *,
        project_id: str,
        action: OperationAction,
        branch_id: str | None = None,
        endpoint_id: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> model.Operation:
        """Queue an operation in the caller's transaction; the runner executes it later.

        When the last operation waiting for the same object is the same request (action,
        payload; not yet started), it is that operation: a client repeating a start or a
        suspend adds nothing to the queue, and the order of different requests is kept. A
        project may have at most ``MAX_QUEUED_PER_PROJECT`` operations waiting
        (QuotaExceeded, 429, beyond), so one tenant cannot fill the queue that every
        tenant's operations go through."""
        waiting = s.execute(
            select(OperationRow)
            .where(OperationRow.project_id == project_id)
            .where(OperationRow.status == OperationStatus.SCHEDULING.value)
            .order_by(OperationRow.created_at, OperationRow.id)
        ).scalars()
        queued = 0
        last: OperationRow | None = None
        for existing in waiting:
            queued += 1
            if existing.branch_id == branch_id and existing.endpoint_id == endpoint_id:
                last = existing
        if (
            last is not None
            and last.action == action.value
            and (last.payload or {}) == (payload or {})
            and last.failures_count == 0
        ):
            return convert.operation(last)
        if queued >= MAX_QUEUED_PER_PROJECT:
            raise QuotaExceeded(
                f"project {project_id} has {queued} operations waiting (limit "
                f"{MAX_QUEUED_PER_PROJECT}); wait for them to finish"
            )
        row = OperationRow(
            id=model.new_id("op"),
            project_id=project_id,
            branch_id=branch_id,
            endpoint_id=endpoint_id,
            action=action.value,
            status=OperationStatus.SCHEDULING.value,
            failures_count=0,
            total_duration_ms=0,
            payload=payload or {},
        )
        s.add(row)
        s.flush()
        s.info[QUEUED_KEY] = True
        return convert.operation(row)

    def apply_config(
        self, s: Session, project_id: str, branch_id: str, change: dict[str, str]
    ) -> list[model.Operation]:
        """One apply_config per live endpoint of the branch (none: applied at next start)."""
        return [
            self.enqueue(
                s,
                project_id=project_id,
                branch_id=branch_id,
                endpoint_id=e.id,
                action=OperationAction.APPLY_CONFIG,
                payload=change,
            )
            for e in self.live_endpoints_of_branch(s, branch_id)
        ]

    # --- connection strings ----------------------------------------------------------------

    def connection_uri(
        self,
        *,
        endpoint_id: str,
        role: str,
        database: str,
        password: str | None,
        pooled: bool,
    ) -> model.ConnectionUri:
        """``mysql://<endpoint_id>[-pooler].<role>:<password>@<proxy>/<database>``.

        Without a password (the store does not have it) the URI carries no password part.
        """
        target = f"{endpoint_id}-pooler" if pooled else endpoint_id
        user = f"{target}.{role}"
        secret = f":{quote(password, safe='')}" if password else ""
        host, port = self.settings.proxy_host, self.settings.proxy_port
        uri = f"mysql://{quote(user, safe='.-_')}{secret}@{host}:{port}/{quote(database)}"
        return model.ConnectionUri(
            connection_uri=uri,
            connection_parameters=model.ConnectionParameters(
                host=host,
                port=port,
                user=user,
                role=role,
                database=database,
                endpoint_id=endpoint_id,
                pooled=pooled,
            ),
        )


def check_org_limit(s: Session, settings: Settings, org_id: str, kind: str) -> None:
    """QuotaExceeded (429, the limit named) when an organization already has as many live
    ``kind`` objects (projects, branches, endpoints, api_keys) as the operator allows."""
    limit = getattr(settings, f"org_max_{kind}")
    if not limit:
        return
    if kind == "projects":
        stmt = select(func.count(ProjectRow.id)).where(ProjectRow.org_id == org_id)
        stmt = stmt.where(ProjectRow.deleted_at.is_(None))
    elif kind == "branches":
        stmt = (
            select(func.count(BranchRow.id))
            .join(ProjectRow, ProjectRow.id == BranchRow.project_id)
            .where(ProjectRow.org_id == org_id)
            .where(BranchRow.deleted_at.is_(None))
        )
    elif kind == "endpoints":
        stmt = (
            select(func.count(EndpointRow.id))
            .join(ProjectRow, ProjectRow.id == EndpointRow.project_id)
            .where(ProjectRow.org_id == org_id)
            .where(EndpointRow.current_state != model.EndpointState.DELETED.value)
        )
    else:
        stmt = select(func.count(ApiKeyRow.id)).where(ApiKeyRow.org_id == org_id)
        stmt = stmt.where(ApiKeyRow.revoked_at.is_(None))
    count = s.execute(stmt).scalar_one()
    if count >= limit:
        raise QuotaExceeded(
            f"organization {org_id} has {count} {kind.replace('_', ' ')} (limit {limit}, "
            f"set by the operator as org_max_{kind})"
        )
