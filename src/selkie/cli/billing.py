"""`selkie usage` and `selkie invoice`: what a project used and what it costs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from selkie.cli.common import (
    ConfigOpt,
    Output,
    OutputOpt,
    ProjectIdOpt,
    client,
    emit,
    out,
    project_id,
    usage_error,
)

PERIOD = re.compile(r"^\d{4}-\d{2}$")


def usage(
    project: Annotated[str | None, typer.Argument(help="Project id (or --project-id)")] = None,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A project's usage this calendar month (UTC) so far, storage now, and its quotas."""
    pid = project_id(project, project_opt)
    with client(config) as c:
        body = c.get(f"/v1/projects/{pid}/usage")
    if output is not Output.table:
        emit(body, output)
        return
    quota = body["quota"]
    rows = [
        ("active time", f"{body['active_time_seconds']:,.1f} s", ""),
        (
            "compute time",
            f"{body['compute_time_seconds']:,.1f} CU-s",
            _limit(quota["compute_time_limit_seconds"], "CU-s"),
        ),
        ("written data", f"{body['written_data_bytes']:,} B", ""),
        ("data transfer", f"{body['data_transfer_bytes']:,} B", ""),
        ("storage", f"{body['data_storage_bytes_hour']:,.1f} B-h", ""),
        ("restore history", f"{body['instant_restore_bytes_hour']:,.1f} B-h", ""),
        ("storage now", f"{body['storage_bytes']:,} B", _limit(quota["storage_limit_bytes"], "B")),
    ]
    table = Table(
        "",
        "used",
        "limit",
        title=f"{pid}: {body['period_start'][:10]} to now (plan {body['plan']})",
    )
    for row in rows:
        table.add_row(*row)
    out.print(table)
    for why in quota["exceeded"]:
        out.print(f"[red]quota exceeded:[/red] {why}")


def _limit(value: int | None, unit: str) -> str:
    return "" if value is None else f"{value:,} {unit}"


def invoice(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[PROJECT_ID] [PERIOD]",
            help="Project id (or --project-id) and month as YYYY-MM (default: this month)",
            show_default=False,
        ),
    ] = None,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A project's invoice for a calendar month, priced by its plan."""
    args = list(args or [])
    period = args.pop() if args and PERIOD.match(args[-1]) else None
    if len(args) > 1:
        usage_error("expected [PROJECT_ID] [PERIOD]")
    pid = project_id(args[0] if args else None, project_opt)
    period = period or datetime.now(UTC).strftime("%Y-%m")
    with client(config) as c:
        body = c.get(f"/v1/projects/{pid}/invoices/{period}")["invoice"]
    if output is not Output.table:
        emit(body, output)
        return
    cur = body["currency"]
    table = Table(
        "item",
        "quantity",
        "included",
        "billable",
        "unit price",
        f"amount ({cur})",
        title=f"{pid} {body['period']} (plan {body['plan']}, {body['status']})",
    )
    for x in body["line_items"]:
        table.add_row(
            x["description"],
            f"{x['quantity']} {x['unit']}",
            x["included"],
            x["billable"],
            x["unit_price"],
            x["amount"],
        )
    table.add_row("total", "", "", "", "", body["total"])
    out.print(table)
