"""Endpoints: the computes' records, their settings and the start/suspend/restart requests."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import select

from selkie import model
from selkie.control.base import ServiceBase, check_org_limit
from selkie.control.rules import (
    mark_endpoint_deleted,
    new_endpoint_row,
    validate_endpoint_settings,
    validate_endpoint_type,
    validate_pooler_mode,
)
from selkie.errors import Conflict, InvalidInput, QuotaExceeded
from selkie.metering.usage import quota_exceeded
from selkie.model import EndpointState, OperationAction, Principal
from selkie.store import Page, Store, convert
from selkie.store.tables import EndpointHealthRow, EndpointRow

_PATCHABLE = {
    "autoscaling_limit_min_cu",
    "autoscaling_limit_max_cu",
    "suspend_timeout_seconds",
    "pooler_enabled",
    "pooler_mode",
    "disabled",
}


class EndpointService(ServiceBase):
    def create(
        self,
        who: Principal,
        project_id: str,
        *,
        branch_id: str,
        type: str = "read_write",
        settings: dict[str, Any] | None = None,
        pooler_enabled: bool = False,
        pooler_mode: str = "transaction",
    ) -> tuple[model.Endpoint, builtins.list[model.Operation]]:
        etype = validate_endpoint_type(type)
        mode = validate_pooler_mode(pooler_mode)
        with self.store.write() as s:
            prow = self.project_row(s, who, project_id)
            self.branch_row(s, who, project_id, branch_id)
            check_org_limit(s, self.settings, prow.org_id, "endpoints")
            if etype is model.EndpointType.READ_WRITE and any(
                e.type == etype.value for e in self.live_endpoints_of_branch(s, branch_id)
            ):
                # Any number of read_only ones (the organization's endpoint limit applies).
                raise Conflict(f"branch {branch_id} already has a {etype.value} endpoint")
            defaults = convert.endpoint_settings(prow.default_endpoint_settings)
            row = new_endpoint_row(
                project_id=project_id,
                branch_id=branch_id,
                endpoint_type=etype,
                settings=validate_endpoint_settings(settings or {}, defaults),
                pooler_enabled=bool(pooler_enabled),
                pooler_mode=mode,
            )
            s.add(row)
            s.flush()
            return self.endpoint_model(row), []

    def list(self, who: Principal, project_id: str, *, cursor: str | None, limit: int) -> Page:
        with self.store.read() as s:
            self.project_row(s, who, project_id)
            stmt = (
                select(EndpointRow)
                .where(EndpointRow.project_id == project_id)
                .where(EndpointRow.current_state != EndpointState.DELETED.value)
            )
            page = Store.page(
                s,
                stmt,
                created_col=EndpointRow.created_at,
                key_col=EndpointRow.id,
                cursor=cursor,
                limit=limit,
            )
            health = {
                h.endpoint_id: h
                for h in s.execute(
                    select(EndpointHealthRow).where(
                        EndpointHealthRow.endpoint_id.in_([r.id for r in page.items])
                    )
                ).scalars()
            }
            return Page([self.endpoint_model(r, health) for r in page.items], page.cursor)

    def get(self, who: Principal, project_id: str, endpoint_id: str) -> model.Endpoint:
        with self.store.read() as s:
            return self.endpoint_model(self.endpoint_row(s, who, project_id, endpoint_id))

    def update(
        self, who: Principal, project_id: str, endpoint_id: str, changes: dict[str, Any]
    ) -> tuple[model.Endpoint, builtins.list[model.Operation]]:
        """Change settings. A new size on a running compute queues a restart (resize)."""
        unknown = set(changes) - _PATCHABLE
        if unknown:
            raise InvalidInput(f"endpoint fields that cannot be changed: {sorted(unknown)}")
        changes = {k: v for k, v in changes.items() if v is not None}
        with self.store.write() as s:
            row = self.endpoint_row(s, who, project_id, endpoint_id)
            current = model.EndpointSettings(
                autoscaling_limit_min_cu=row.autoscaling_limit_min_cu,
                autoscaling_limit_max_cu=row.autoscaling_limit_max_cu,
                suspend_timeout_seconds=row.suspend_timeout_seconds,
            )
            sized = validate_endpoint_settings(
                {k: v for k, v in changes.items() if k in model.EndpointSettings.__annotations__},
                current,
            )
            resized = (sized.autoscaling_limit_min_cu, sized.autoscaling_limit_max_cu) != (
                current.autoscaling_limit_min_cu,
                current.autoscaling_limit_max_cu,
            )
            row.autoscaling_limit_min_cu = sized.autoscaling_limit_min_cu
            row.autoscaling_limit_max_cu = sized.autoscaling_limit_max_cu
            row.suspend_timeout_seconds = sized.suspend_timeout_seconds
            if "pooler_enabled" in changes:
                if not isinstance(changes["pooler_enabled"], bool):
                    raise InvalidInput("pooler_enabled must be true or false")
                row.pooler_enabled = changes["pooler_enabled"]
            if "pooler_mode" in changes:
                row.pooler_mode = validate_pooler_mode(changes["pooler_mode"]).value
            if "disabled" in changes:
                if not isinstance(changes["disabled"], bool):
                    raise InvalidInput("disabled must be true or false")
                row.disabled = changes["disabled"]
            ops = []
            running = row.current_state in (
                EndpointState.ACTIVE.value,
                EndpointState.STARTING.value,
            )
            if resized and running:
                ops.append(self._queue(s, row, OperationAction.RESTART_COMPUTE))
            if row.disabled and running:
                ops.append(self._queue(s, row, OperationAction.SUSPEND_COMPUTE))
            s.flush()
            return self.endpoint_model(row), ops

    def delete(
        self, who: Principal, project_id: str, endpoint_id: str
    ) -> tuple[model.Endpoint, builtins.list[model.Operation]]:
        with self.store.write() as s:
            row = self.endpoint_row(s, who, project_id, endpoint_id)
            mark_endpoint_deleted(row)
            s.flush()
            op = self._queue(s, row, OperationAction.DELETE_ENDPOINT)
            return self.endpoint_model(row), [op]

    def request(
        self, who: Principal, project_id: str, endpoint_id: str, action: OperationAction
    ) -> tuple[model.Endpoint, builtins.list[model.Operation]]:
        """Queue a start, suspend or restart; the operations runner carries it out."""
        target = {
            OperationAction.START_COMPUTE: EndpointState.ACTIVE,
            OperationAction.RESTART_COMPUTE: EndpointState.ACTIVE,
            OperationAction.SUSPEND_COMPUTE: EndpointState.SUSPENDED,
        }[action]
        if target is EndpointState.ACTIVE:
            # Refused here, with the reason, rather than by the operation later.
            with self.store.read() as s:
                settings = convert.project_settings(self.project_row(s, who, project_id).settings)
            problems = quota_exceeded(self.store, project_id, settings, model.utcnow())
            if problems:
                raise QuotaExceeded(problems[0])
        with self.store.write() as s:
            row = self.endpoint_row(s, who, project_id, endpoint_id)
            if row.disabled and target is EndpointState.ACTIVE:
                raise Conflict(f"endpoint {endpoint_id} is disabled; enable it first")
            row.pending_state = target.value
            row.updated_at = model.utcnow()
            op = self._queue(s, row, action)
            s.flush()
            return self.endpoint_model(row), [op]

    def _queue(self, s: Any, row: EndpointRow, action: OperationAction) -> model.Operation:
        return self.enqueue(
            s,
            project_id=row.project_id,
            branch_id=row.branch_id,
            endpoint_id=row.id,
            action=action,
        )
