"""`selkie config`: every setting as this process would run with it (defaults < file <
environment), beside its default; secrets are shown as set or not, never their values."""

from __future__ import annotations

from selkie.cli.common import ConfigOpt, Output, OutputOpt, emit, settings
from selkie.config import settings_table


def config(config: ConfigOpt = None, output: OutputOpt = Output.table) -> None:
    """Print the effective settings (file, environment and defaults merged)."""
    loaded = settings(config)
    rows = [
        {"setting": env, "value": value, "default": default}
        for env, default, value in settings_table(loaded)
    ]
    emit(rows, output, ["setting", "value", "default"])
