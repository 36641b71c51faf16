"""A real `selkie up` per test module, and a runner that drives the CLI against it
in-process (typer's CliRunner), parsing what ``-o json`` prints."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from selkie.cli import app
from tests.helpers import first_key, selkie_env, selkie_up
from tests.platforms import require_mariadb


@dataclass
class Cli:
    """The environment of a running `selkie up`, and the CLI run against it."""

    env: dict[str, str]
    tmp: Path

    def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        # The test process's own SELKIE_* variables must not reach the CLI's settings.
        environ: dict[str, str | None] = {
            k: None for k in os.environ if k.startswith("SELKIE_") and k not in self.env
        }
        environ.update(self.env)
        environ.update(env or {})
        return CliRunner().invoke(app, list(args), input=input, env=environ)

    def ok(self, *args: str, **kw: Any) -> Result:
        result = self.run(*args, **kw)
        assert result.exit_code == 0, (
            f"selkie {' '.join(args)} exited {result.exit_code}: {result.stderr}{result.stdout}"
            f"{result.exception!r}"
        )
        return result

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "-o", "json", **kw).stdout)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, template_datadir: Path) -> Iterator[Cli]:
    require_mariadb()
    tmp = tmp_path_factory.mktemp("cli")
    env = selkie_env(tmp, template_datadir)
    log = tmp / "up.log"
    with selkie_up(env, log):
        env["SELKIE_API_KEY"] = first_key(log)
        env["SELKIE_CONTEXT_FILE"] = str(tmp / "context.json")
        yield Cli(env, tmp)
