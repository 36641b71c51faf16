"""What every command shares: options, the API client, output, the context file, waiting
for operations.

Exit codes scripts can rely on: 0 done; 1 the API refused or failed the request (not found,
conflict, invalid input, a failed operation, the API unreachable); 2 bad usage or
configuration (a wrong option, no API key, no project given and none in the context).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from selkie.client import SelkieClient
from selkie.config import Settings, load_settings
from selkie.errors import NotFound, SelkieError

# Piped output is not cut at 80 columns: ids are long and scripts read the tables too.
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)

EXIT_API = 1
EXIT_USAGE = 2


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (or SELKIE_CONFIG)")
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table, json or yaml")]
ProjectIdOpt = Annotated[
    str | None,
    typer.Option("--project-id", help="Project id (default: the one set by `selkie set-context`)"),
]
BranchOpt = Annotated[
    str | None, typer.Option("--branch", help="Branch id or name (default: the default branch)")
]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Return at once, without waiting for the operations")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the operations", min=1)
]


def fail(message: str, code: int = EXIT_API) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    """Bad usage the parser cannot see (arguments that do not fit together): exit 2."""
    fail(message, EXIT_USAGE)


def settings(config: Path | None) -> Settings:
    try:
        return load_settings(config_file=config)
    except SelkieError as exc:
        fail(exc.message, EXIT_USAGE)


@contextmanager
def failures() -> Iterator[None]:
    """Selkie errors become one red line and exit status 1, not a traceback."""
    try:
        yield
    except SelkieError as exc:
        fail(exc.message)


@contextmanager
def client(config: Path | None) -> Iterator[SelkieClient]:
    s = settings(config)
    if not s.api_key:
        fail(
            "no API key: set SELKIE_API_KEY (selkie up prints one on first start; "
            "`selkie api-keys create --name NAME` makes another)",
            EXIT_USAGE,
        )
    with failures(), SelkieClient(s.effective_api_url, s.api_key) as c:
        yield c


# --- output ---------------------------------------------------------------------------------


def emit(data: Any, output: Output, columns: list[str] | None = None) -> None:
    """``data`` (a dict or a list of dicts) as JSON, YAML or a table of ``columns``."""
    if output is Output.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if output is Output.yaml:
        # Through JSON first: what the API answered is plain data, dates already strings.
        plain = json.loads(json.dumps(data, default=str))
        sys.stdout.write(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))
        return
    rows = data if isinstance(data, list) else [data]
    if columns is None:
        columns = list(rows[0].keys()) if rows else []
    table = Table(*columns, show_lines=False)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


def note(text: str, output: Output) -> None:
    """A line for people, after a table; JSON and YAML stay parseable."""
    if output is Output.table:
        out.print(text, highlight=False)


# --- the context file -----------------------------------------------------------------------


def context_path() -> Path:
    """SELKIE_CONTEXT_FILE, else ``$XDG_CONFIG_HOME/selkie/context.json`` (neonctl keeps its
    context in its config directory the same way)."""
    explicit = os.environ.get("SELKIE_CONTEXT_FILE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "selkie" / "context.json"


def read_context() -> dict[str, str]:
    path = context_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        fail(f"cannot read the context file {path}: {exc}", EXIT_USAGE)
    if not isinstance(data, dict):
        fail(f"the context file {path} is not a JSON object", EXIT_USAGE)
    return {str(k): str(v) for k, v in data.items() if v is not None}


def write_context(data: dict[str, str]) -> Path:
    path = context_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        fail(f"cannot write the context file {path}: {exc}", EXIT_USAGE)
    return path


def project_id(positional: str | None, option: str | None) -> str:
    """The project a command is about: the positional id (the older form), --project-id, or
    the context; exit 2 when none is given."""
    if positional and option and positional != option:
        usage_error(f"two projects given: {positional} and --project-id {option}")
    chosen = positional or option or read_context().get("project_id")
    if not chosen:
        fail(
            "no project: pass --project-id ID or remember one with "
            "`selkie set-context --project-id ID`",
            EXIT_USAGE,
        )
    return chosen


def split_ids(args: list[str], names: list[str], option: str | None) -> tuple[str, list[str]]:
    """Commands take ``[PROJECT_ID] ID…``: with one more argument than ``names`` the first is
    the project (how these commands were first called), otherwise it is --project-id or the
    context."""
    if len(args) == len(names) + 1:
        return project_id(args[0], option), args[1:]
    if len(args) == len(names):
        return project_id(None, option), args
    usage_error(f"expected {' '.join(['[PROJECT_ID]', *names])}")


def resolve_branch(c: SelkieClient, pid: str, branch: str | None) -> str:
    """A branch id from an id or a name; the project's default branch when None."""
    branches = c.list_all(f"/v1/projects/{pid}/branches", "branches")
    for b in branches:
        if (branch is None and b["default"]) or (branch is not None and branch == b["id"]):
            return str(b["id"])
    named = [b for b in branches if b["name"] == branch]
    if len(named) == 1:
        return str(named[0]["id"])
    if len(named) > 1:
        raise SelkieError(f"several branches are named {branch!r}: pass its id")
    if branch is None:
        raise NotFound(f"project {pid} has no default branch")
    raise NotFound(f"branch {branch} not found in project {pid}")


# --- operations -----------------------------------------------------------------------------

TERMINAL = {"finished", "failed", "cancelled", "skipped"}


def wait(
    c: SelkieClient,
    pid: str,
    operations: list[dict[str, Any]],
    what: str,
    *,
    no_wait: bool = False,
    timeout: float = 300.0,
    gone_ok: bool = False,
) -> bool:
    """Wait, behind a spinner on stderr, until every operation has ended; a failed one is an
    error (exit 1). ``gone_ok``: an operation whose project was deleted has ended. Returns
    whether it waited."""
    pending = [op["id"] for op in operations if op.get("status") not in TERMINAL]
    if no_wait or not pending:
        return False
    deadline = time.monotonic() + timeout
    with err.status(f"{what}…", spinner="dots"):
        while pending:
            for op_id in list(pending):
                try:
                    op = c.get(f"/v1/projects/{pid}/operations/{op_id}")["operation"]
                except NotFound:
                    if not gone_ok:
                        raise
                    pending.remove(op_id)
                    continue
                if op["status"] == "failed":
                    raise SelkieError(
                        f"operation {op_id} ({op['action']}) failed: {op.get('error') or '?'}"
                    )
                if op["status"] in TERMINAL:
                    pending.remove(op_id)
            if pending:
                if time.monotonic() > deadline:
                    raise SelkieError(
                        f"{what}: still running after {timeout:g} s; follow it with "
                        f"`selkie operations get {pending[0]} --project-id {pid}`"
                    )
                time.sleep(0.2)
    return True


def object_path(pid: str, plural: str, item_id: str = "") -> str:
    """``/v1/projects/{pid}/{plural}[/{item_id}]``."""
    return f"/v1/projects/{pid}/{plural}" + (f"/{item_id}" if item_id else "")


def finish(
    c: SelkieClient,
    pid: str,
    body: dict[str, Any],
    kind: tuple[str, str],
    what: str,
    *,
    no_wait: bool,
    timeout: float,
    output: Output,
    columns: list[str],
) -> None:
    """Wait for an answer's operations, then print its object as it is now; ``kind`` is
    its key in the answer and its path's plural, e.g. ``("branch", "branches")``."""
    key, plural = kind
    item = body[key]
    if wait(c, pid, body["operations"], what, no_wait=no_wait, timeout=timeout):
        item = c.get(object_path(pid, plural, item["id"]))[key]
    emit(item, output, columns)
