"""Usage and invoices of projects."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from selkie.control.base import ServiceBase
from selkie.errors import InvalidInput
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
    Principal,
    utcnow,
)
from selkie.store import convert
from selkie.store.tables import (
    ProjectRow,
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
