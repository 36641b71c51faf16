"""Branches of a project: copies of their parent (as it is now, or at a point of its
history), with its roles and databases."""

from __future__ import annotations

import builtins
import logging
from datetime import datetime
from types import EllipsisType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selkie import model
from selkie.control.base import Created, ServiceBase, check_org_limit
from selkie.control.points import Point, check_point
from selkie.control.rules import (
    cancel_waiting,
    copy_accounts,
    mark_endpoint_deleted,
    new_endpoint_row,
    validate_endpoint_settings,
    validate_endpoint_type,
)
from selkie.errors import Conflict, InvalidInput, NotFound, SelkieError
from selkie.model import (
    BranchState,
    OperationAction,
    Principal,
    utcnow,
)
from selkie.store import Page, Store, convert
from selkie.store.tables import BranchRow, OperationRow, ProjectRow

log = logging.getLogger(__name__)


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
        expires_at: datetime | None = None,
    ) -> Created:
        """A branch is a copy of its parent (as it is now, or at ``parent_timestamp`` /
        ``parent_lsn``): its roles and databases come along. With ``expires_at``, the
        scheduler's leader deletes it (and its endpoints) then."""
        with self.store.write() as s:
            prow = self.project_row(s, who, project_id)
            check_org_limit(s, self.settings, prow.org_id, "branches")
            if parent_id is None:
                parent = self._default_branch(s, project_id)
            else:
                parent = self.branch_row(s, who, project_id, parent_id)
            if parent.expires_at is not None:
                raise Conflict(
                    f"branch {parent.id} expires at {parent.expires_at.isoformat()}: a branch "
                    "that expires has no children; clear its expires_at first"
                )
            if expires_at is not None:
                _check_future(expires_at)
            point = None
            if parent_timestamp is not None or parent_lsn is not None:
                point = self._parent_point(s, prow, parent, parent_timestamp, parent_lsn)
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
                expires_at=expires_at,
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
            new_endpoints = self._add_endpoints(s, prow, branch_id, endpoints or [])
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

    def _parent_point(
        self,
        s: Session,
        prow: ProjectRow,
        parent: BranchRow,
        at: datetime | None,
        lsn: str | None,
    ) -> Point:
        """The point of the parent's history a branch starts from, checked against the
        retention window."""
        return check_point(
            s,
            settings_archive=self.settings.archive_enabled,
            project=prow,
            branch=parent,
            at=at,
            lsn=lsn,
            names=("parent_timestamp", "parent_lsn"),
            now=utcnow(),
        )

    def _add_endpoints(
        self,
        s: Session,
        prow: ProjectRow,
        branch_id: str,
        specs: builtins.list[dict[str, Any]],
    ) -> builtins.list[model.Endpoint]:
        """The endpoints a new branch is created with (at most one read_write)."""
        defaults = convert.endpoint_settings(prow.default_endpoint_settings)
        new_endpoints = []
        seen_rw = False
        for spec in specs:
            etype = validate_endpoint_type(spec.get("type", "read_write"))
            if etype is model.EndpointType.READ_WRITE:
                if seen_rw:
                    raise Conflict("a branch can have only one read_write endpoint")
                seen_rw = True
            erow = new_endpoint_row(
                project_id=prow.id,
                branch_id=branch_id,
                endpoint_type=etype,
                settings=validate_endpoint_settings(
                    {k: v for k, v in spec.items() if k != "type"}, defaults
                ),
            )
            s.add(erow)
            s.flush()
            new_endpoints.append(self.endpoint_model(erow))
        return new_endpoints

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
        self,
        who: Principal,
        project_id: str,
        branch_id: str,
        *,
        name: str | None = None,
        protected: bool | None = None,
        expires_at: datetime | EllipsisType | None = ...,
    ) -> model.Branch:
        """``expires_at``: a time to delete the branch at, None to keep it for good, ``...``
        (the default) to leave it as it is."""
        with self.store.write() as s:
            row = self.branch_row(s, who, project_id, branch_id)
            if name is not None and name != row.name:
                model.validate_name("branch", name)
                self._check_name_free(s, project_id, name)
                row.name = name
            if protected is not None:
                row.protected = protected
            if not isinstance(expires_at, EllipsisType):
                if expires_at is not None:
                    _check_future(expires_at)
                    self._check_may_expire(s, row)
                row.expires_at = expires_at
            if row.protected and row.expires_at is not None:
                raise InvalidInput(
                    f"branch {branch_id} is protected and cannot expire; "
                    "unprotect it or clear its expires_at"
                )
            row.updated_at = utcnow()
            s.flush()
            return convert.branch(row)

    def set_as_default(self, who: Principal, project_id: str, branch_id: str) -> model.Branch:
        """Make the branch the project's default (the one new branches come from, and that
        cannot be deleted); the previous default becomes an ordinary branch."""
        with self.store.write() as s:
            row = self.branch_row(s, who, project_id, branch_id)
            if row.expires_at is not None:
                raise InvalidInput(
                    f"branch {branch_id} expires and cannot be the default; "
                    "clear its expires_at first"
                )
            if not row.is_default:
                previous = self._default_branch(s, project_id)
                previous.is_default = False
                previous.updated_at = utcnow()
                s.flush()  # one default at a time, for the unique index
                row.is_default = True
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
            if row.protected:
                raise Conflict(f"branch {branch_id} is protected; unprotect it first")
            self._check_no_children(s, row, "delete them first")
            op = self._delete(s, row, OperationAction.DELETE_TIMELINE)
            return convert.branch(row), [op]

    def expire_due(self, now: datetime) -> builtins.list[model.Operation]:
        """Delete every branch whose ``expires_at`` has come (the scheduler's leader calls
        this): each gets an ``expire_branch`` operation, which removes its endpoints and
        data as a delete does. One that may not go (it became the default, or has children
        made before the field was set) is left, with a warning, until that changes."""
        due = (
            select(BranchRow)
            .where(BranchRow.expires_at.is_not(None))
            .where(BranchRow.expires_at <= now)
            .where(BranchRow.deleted_at.is_(None))
            .order_by(BranchRow.expires_at)
        )
        with self.store.read() as s:  # most calls: nothing due, and no write
            if s.execute(due.limit(1)).first() is None:
                return []
        with self.store.write() as s:
            ops = []
            for row in s.execute(due).scalars():
                try:
                    self._check_may_expire(s, row)
                except SelkieError as exc:
                    log.warning("branch %s expired but stays: %s", row.id, exc.message)
                    continue
                ops.append(self._delete(s, row, OperationAction.EXPIRE_BRANCH))
            return ops

    def _delete(self, s: Session, row: BranchRow, action: OperationAction) -> model.Operation:
        # A restore or a branching still waiting has nothing left to act on.
        cancel_waiting(s, OperationRow.branch_id == row.id, "the branch was deleted")
        endpoint_ids = []
        for erow in self.live_endpoints_of_branch(s, row.id):
            mark_endpoint_deleted(erow)
            endpoint_ids.append(erow.id)
        row.deleted_at = utcnow()
        s.flush()
        return self.enqueue(
            s,
            project_id=row.project_id,
            branch_id=row.id,
            action=action,
            payload={"endpoint_ids": endpoint_ids},
        )

    def _check_may_expire(self, s: Session, row: BranchRow) -> None:
        if row.is_default:
            raise InvalidInput(f"branch {row.id} is the project's default and cannot expire")
        if row.protected:
            raise InvalidInput(f"branch {row.id} is protected and cannot expire; unprotect it")
        self._check_no_children(s, row, "a branch that expires has none")

    @staticmethod
    def _check_no_children(s: Session, row: BranchRow, what_to_do: str) -> None:
        children = sorted(
            s.execute(
                select(BranchRow.id)
                .where(BranchRow.parent_id == row.id)
                .where(BranchRow.deleted_at.is_(None))
            ).scalars()
        )
        if children:
            raise Conflict(
                f"branch {row.id} has child branches ({', '.join(children)}); {what_to_do}"
            )

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


def _check_future(expires_at: datetime) -> None:
    if expires_at.tzinfo is None:
        raise InvalidInput("expires_at needs a timezone (e.g. 2026-12-01T14:02:00Z)")
    if expires_at <= utcnow():
        raise InvalidInput(f"expires_at {expires_at.isoformat()} is not in the future")
