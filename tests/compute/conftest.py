"""Fixtures for tests that run real mariadbd computes: a whole in-process platform."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from selkie.config import load_settings
from selkie.control.bootstrap import local_principal
from selkie.model import Principal
from selkie.server import Platform
from tests.conftest import need_service, seed_template


def require_mariadb() -> None:
    for binary in ("mariadbd", "mariadb-install-db"):
        if not (shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists()):
            need_service("MariaDB server binaries", f"{binary} not found (make setup installs it)")


@pytest.fixture
async def platform(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    require_mariadb()
    seed_template(template_datadir, tmp_path / "data")
    settings = load_settings(
        environ={"SELKIE_DATA_DIR": str(tmp_path / "data"), "SELKIE_COMPUTE_STOP_TIMEOUT": "20"}
    )
    p = Platform.open(settings)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()
        p.close()


@pytest.fixture
def who(platform: Platform) -> Principal:
    return local_principal(platform.control)
