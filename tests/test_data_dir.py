"""The data dir belongs to one Selkie process: made 0700, locked while a platform on its
SQLite store is open (a second one refuses with a clear message), the proxy's TLS key 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from selkie.config import load_settings
from selkie.errors import ConfigError
from selkie.platform import Platform
from selkie.proxy.tls import server_context


def test_one_process_per_data_dir(tmp_path: Path) -> None:
    settings = load_settings(environ={"SELKIE_DATA_DIR": str(tmp_path / "data")})
    first = Platform.open(settings)
    try:
        assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "data" / "selkie.db").stat().st_mode) == 0o600
        with pytest.raises(ConfigError, match="in use by Selkie process"):
            Platform.open(settings)
    finally:
        first.close()
    Platform.open(settings).close()  # free again once the first is closed


def test_the_tls_key_is_private(tmp_path: Path) -> None:
    server_context(cert="", key="", data_dir=tmp_path, domain="selkie.localhost")
    keys = list(tmp_path.rglob("*key*.pem"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
