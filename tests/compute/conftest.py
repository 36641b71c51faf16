"""Fixtures for tests that run real mariadbd computes: a whole in-process platform."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from selkie.config import load_settings
from selkie.control.bootstrap import local_principal
from selkie.model import Principal
from selkie.platform import Platform
from tests.conftest import need_service, seed_template
from tests.helpers import free_port


def require_mariadb() -> None:
    for binary in ("mariadbd", "mariadb-install-db"):
        if not (shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists()):
            need_service("MariaDB server binaries", f"{binary} not found (make setup installs it)")


@asynccontextmanager
async def open_platform(
    tmp_path: Path,
    template_datadir: Path,
    *,
    proxy: bool = False,
    aws: dict[str, str] | None = None,
    **env: str,
) -> AsyncIterator[Platform]:
    """A whole in-process platform on its own data dir (and proxy port); ``env`` adds
    SELKIE_* settings, ``aws`` AWS_* variables."""
    require_mariadb()
    seed_template(template_datadir, tmp_path / "data")
    environ = {"SELKIE_DATA_DIR": str(tmp_path / "data"), "SELKIE_COMPUTE_STOP_TIMEOUT": "20"}
    if proxy:
        environ["SELKIE_PROXY_LISTEN"] = f"127.0.0.1:{free_port()}"
    environ.update({f"SELKIE_{k.upper()}": v for k, v in env.items()})
    environ.update(aws or {})
    p = Platform.open(load_settings(environ=environ))
    await p.start(proxy=proxy)
    try:
        yield p
    finally:
        await p.stop()
        p.close()


@pytest.fixture
async def platform(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    async with open_platform(tmp_path, template_datadir) as p:
        yield p


@pytest.fixture
def who(platform: Platform) -> Principal:
    return local_principal(platform.control)
