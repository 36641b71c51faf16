"""Invoices: a month's usage priced by the project's plan.

Quantities are kept to six decimals; each line's amount is its billable quantity (what
exceeds the plan's allowance) times the unit price, rounded half-up to cents; the total is
the sum of the lines. GB means GiB (2**30 bytes); a GB-month is a GiB stored for the whole
invoiced month, so storage is its byte-hours over (GiB x the hours of that month).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from selkie.config import Plan
from selkie.errors import InvalidInput
from selkie.metering.usage import PeriodUsage, next_month

GIB = Decimal(2**30)
QUANTITY = Decimal("0.000001")
CENT = Decimal("0.01")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class LineItem:
    item: str
    description: str
    unit: str
    quantity: Decimal
    included: Decimal
    billable: Decimal
    unit_price: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Invoice:
    project_id: str
    plan: str
    currency: str
    period: str
    period_start: datetime
    period_end: datetime
    # "open" while the month runs (the figures still grow), "final" once it has ended.
    status: str
    line_items: list[LineItem]
    total: Decimal


def parse_period(period: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` to the month's [start, end) in UTC."""
    m = _PERIOD.match(period)
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
        raise InvalidInput(f"period {period!r} is not a month such as 2026-11")
    start = datetime(int(m.group(1)), int(m.group(2)), 1, tzinfo=UTC)
    return start, next_month(start)


def _line(
    item: str, description: str, unit: str, quantity: Decimal, included: Decimal, price: Decimal
) -> LineItem:
    quantity = quantity.quantize(QUANTITY, rounding=ROUND_HALF_UP)
    billable = max(Decimal(0), quantity - included)
    amount = (billable * price).quantize(CENT, rounding=ROUND_HALF_UP)
    return LineItem(item, description, unit, quantity, included, billable, price, amount)


def invoice(project_id: str, plan: Plan, period: str, usage: PeriodUsage, now: datetime) -> Invoice:
    start, end = parse_period(period)
    month_hours = Decimal(int((end - start).total_seconds()) // 3600)
    lines = [
        _line(
            "compute",
            "Compute (CU-hours: active hours x compute units)",
            "CU-hour",
            Decimal(str(usage.compute_time_seconds)) / 3600,
            plan.included_cu_hours,
            plan.price_per_cu_hour,
        ),
        _line(
            "storage",
            "Storage (GiB-months)",
            "GB-month",
            Decimal(str(usage.data_storage_bytes_hour)) / GIB / month_hours,
            plan.included_gb_months,
            plan.price_per_gb_month,
        ),
        _line(
            "instant_restore",
            "Restore history in the archive (GiB-months)",
            "GB-month",
            Decimal(str(usage.instant_restore_bytes_hour)) / GIB / month_hours,
            plan.included_gb_months_instant_restore,
            plan.price_per_gb_month_instant_restore,
        ),
        _line(
            "data_transfer",
            "Data transfer to clients (GiB)",
            "GB",
            Decimal(usage.data_transfer_bytes) / GIB,
            plan.included_gb_transfer,
            plan.price_per_gb_transfer,
        ),
        _line(
            "written_data",
            "Written data (GiB)",
            "GB",
            Decimal(usage.written_data_bytes) / GIB,
            plan.included_gb_written,
            plan.price_per_gb_written,
        ),
    ]
    return Invoice(
        project_id=project_id,
        plan=plan.name,
        currency=plan.currency,
        period=period,
        period_start=start,
        period_end=end,
        status="final" if now >= end else "open",
        line_items=lines,
        total=sum((x.amount for x in lines), Decimal("0.00")),
    )
