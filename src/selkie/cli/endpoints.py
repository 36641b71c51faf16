"""`selkie endpoints …`: computes, and starting, suspending and restarting them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from selkie.cli.common import (
    BranchOpt,
    ConfigOpt,
    NoWaitOpt,
    Output,
    OutputOpt,
    ProjectIdOpt,
    TimeoutOpt,
    client,
    emit,
    finish,
    object_path,
    project_id,
    resolve_branch,
    split_ids,
    usage_error,
    wait,
)
from selkie.client import SelkieClient

app = typer.Typer(no_args_is_help=True, help="Endpoints (computes).")

COLUMNS = [
    "id",
    "branch_id",
    "type",
    "current_state",
    "pending_state",
    "autoscaling_limit_min_cu",
    "autoscaling_limit_max_cu",
    "current_cu",
    "suspend_timeout_seconds",
    "pooler_enabled",
    "last_active",
]


class EndpointType(StrEnum):
    read_write = "read_write"
    read_only = "read_only"


class PoolerMode(StrEnum):
    transaction = "transaction"
    session = "session"


IdsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="[PROJECT_ID] ENDPOINT_ID",
        help="Endpoint id (a project id before it is the same as --project-id)",
        show_default=False,
    ),
]
MinCuOpt = Annotated[float | None, typer.Option("--min-cu", help="Autoscaling minimum (CU)")]
MaxCuOpt = Annotated[float | None, typer.Option("--max-cu", help="Autoscaling maximum (CU)")]
SuspendOpt = Annotated[
    int | None, typer.Option("--suspend-timeout", help="Idle seconds before a suspend (0: never)")
]
PoolerOpt = Annotated[
    bool | None, typer.Option("--pooler/--no-pooler", help="Connection pooling", show_default=False)
]
PoolerModeOpt = Annotated[PoolerMode | None, typer.Option("--pooler-mode", help="Pooling mode")]


def _path(pid: str, item_id: str = "") -> str:
    return object_path(pid, "endpoints", item_id)


def _finish(
    c: SelkieClient,
    pid: str,
    body: dict[str, Any],
    what: str,
    *,
    no_wait: bool,
    timeout: float,
    output: Output,
) -> None:
    finish(
        c,
        pid,
        body,
        ("endpoint", "endpoints"),
        what,
        no_wait=no_wait,
        timeout=timeout,
        output=output,
        columns=COLUMNS,
    )


@app.command("list")
def endpoints_list(
    project: Annotated[str | None, typer.Argument(help="Project id (or --project-id)")] = None,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid = project_id(project, project_opt)
    with client(config) as c:
        emit(c.list_all(_path(pid), "endpoints"), output, COLUMNS)


@app.command("get")
def endpoints_get(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    pid, (endpoint_id,) = split_ids(ids, ["ENDPOINT_ID"], project_opt)
    with client(config) as c:
        emit(c.get(_path(pid, endpoint_id))["endpoint"], output, COLUMNS)


@app.command("create")
def endpoints_create(
    project_opt: ProjectIdOpt = None,
    branch: BranchOpt = None,
    type: Annotated[EndpointType, typer.Option("--type", help="Endpoint type")] = (
        EndpointType.read_write
    ),
    min_cu: MinCuOpt = None,
    max_cu: MaxCuOpt = None,
    suspend_timeout: SuspendOpt = None,
    pooler: Annotated[bool, typer.Option("--pooler", help="Enable connection pooling")] = False,
    pooler_mode: Annotated[PoolerMode, typer.Option("--pooler-mode", help="Pooling mode")] = (
        PoolerMode.transaction
    ),
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """An endpoint on a branch: one read_write, any number of read_only (fed by the
    safekeeper; `<branch_id>-ro.<role>` spreads clients over them). It starts on its first
    connection or with `selkie endpoints start`."""
    pid = project_id(None, project_opt)
    spec: dict[str, Any] = {
        "type": type.value,
        "autoscaling_limit_min_cu": min_cu,
        "autoscaling_limit_max_cu": max_cu,
        "suspend_timeout_seconds": suspend_timeout,
        "pooler_enabled": pooler,
        "pooler_mode": pooler_mode.value,
    }
    with client(config) as c:
        spec["branch_id"] = resolve_branch(c, pid, branch)
        body = c.post(_path(pid), {"endpoint": {k: v for k, v in spec.items() if v is not None}})
        _finish(
            c, pid, body, "creating the endpoint", no_wait=no_wait, timeout=timeout, output=output
        )


@app.command("update")
def endpoints_update(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    min_cu: MinCuOpt = None,
    max_cu: MaxCuOpt = None,
    suspend_timeout: SuspendOpt = None,
    pooler: PoolerOpt = None,
    pooler_mode: PoolerModeOpt = None,
    disabled: Annotated[
        bool | None,
        typer.Option("--disabled/--enabled", help="Refuse connections", show_default=False),
    ] = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change an endpoint's size, suspend timeout or pooling (a running compute is resized
    live or restarted as needed)."""
    pid, (endpoint_id,) = split_ids(ids, ["ENDPOINT_ID"], project_opt)
    spec = {
        "autoscaling_limit_min_cu": min_cu,
        "autoscaling_limit_max_cu": max_cu,
        "suspend_timeout_seconds": suspend_timeout,
        "pooler_enabled": pooler,
        "pooler_mode": pooler_mode.value if pooler_mode else None,
        "disabled": disabled,
    }
    changes = {k: v for k, v in spec.items() if v is not None}
    if not changes:
        usage_error("nothing to change: pass --min-cu, --max-cu, --suspend-timeout…")
    with client(config) as c:
        body = c.patch(_path(pid, endpoint_id), {"endpoint": changes})
        _finish(
            c, pid, body, "updating the endpoint", no_wait=no_wait, timeout=timeout, output=output
        )


def _action(
    action: str,
    what: str,
    ids: list[str],
    project_opt: str | None,
    *,
    no_wait: bool,
    timeout: float,
    config: Path | None,
    output: Output,
) -> None:
    pid, (endpoint_id,) = split_ids(ids, ["ENDPOINT_ID"], project_opt)
    with client(config) as c:
        body = c.post(f"{_path(pid, endpoint_id)}/{action}")
        _finish(c, pid, body, what, no_wait=no_wait, timeout=timeout, output=output)


@app.command("start")
def endpoints_start(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Start the endpoint's compute (waits until it answers, unless --no-wait)."""
    _action(
        "start",
        "starting",
        ids,
        project_opt,
        no_wait=no_wait,
        timeout=timeout,
        config=config,
        output=output,
    )


@app.command("suspend")
def endpoints_suspend(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Stop the endpoint's compute; the next connection wakes it."""
    _action(
        "suspend",
        "suspending",
        ids,
        project_opt,
        no_wait=no_wait,
        timeout=timeout,
        config=config,
        output=output,
    )


@app.command("restart")
def endpoints_restart(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Stop and start the endpoint's compute."""
    _action(
        "restart",
        "restarting",
        ids,
        project_opt,
        no_wait=no_wait,
        timeout=timeout,
        config=config,
        output=output,
    )


@app.command("delete")
def endpoints_delete(
    ids: IdsArg,
    project_opt: ProjectIdOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Delete an endpoint (its compute is stopped; the branch's data stays)."""
    pid, (endpoint_id,) = split_ids(ids, ["ENDPOINT_ID"], project_opt)
    with client(config) as c:
        body = c.delete(_path(pid, endpoint_id))
        wait(c, pid, body["operations"], "deleting the endpoint", no_wait=no_wait, timeout=timeout)
    emit(body["endpoint"], output, COLUMNS)
