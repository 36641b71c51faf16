from __future__ import annotations

from pathlib import Path

import pytest

from selkie.config import load_settings, split_listen
from selkie.errors import ConfigError


def test_defaults() -> None:
    s = load_settings(environ={})
    assert s.data_dir == Path(".selkie")
    assert s.api_listen == "127.0.0.1:8080"
    assert s.proxy_listen == "127.0.0.1:6033"
    assert s.effective_database_url == f"sqlite:///{Path('.selkie/selkie.db').resolve()}"
    assert s.effective_api_url == "http://127.0.0.1:8080"
    assert (s.proxy_host, s.proxy_port) == ("127.0.0.1", 6033)


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "selkie.toml"
    cfg.write_text(
        'api_listen = "127.0.0.1:9000"\nproxy_listen = "0.0.0.0:7000"\nlog_level = "debug"\n'
    )
    env = {"SELKIE_CONFIG": str(cfg), "SELKIE_PROXY_LISTEN": "127.0.0.2:7001"}
    s = load_settings(environ=env)
    assert s.api_listen == "127.0.0.1:9000"  # file beats default
    assert s.proxy_listen == "127.0.0.2:7001"  # env beats file
    assert s.log_level == "debug"
    s = load_settings(environ=env, overrides={"api_listen": "127.0.0.1:9100"})
    assert s.api_listen == "127.0.0.1:9100"


def test_database_url_and_data_dir_from_env(tmp_path: Path) -> None:
    s = load_settings(
        environ={
            "SELKIE_DATA_DIR": str(tmp_path),
            "SELKIE_DATABASE_URL": "postgresql+psycopg://x/y",
        }
    )
    assert s.data_dir == tmp_path
    assert s.effective_database_url == "postgresql+psycopg://x/y"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("nope = 1\n", "unknown setting 'nope'"),
        ("api_listen = [1]\n", "not a string"),
        ("= broken", "not valid TOML"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=cfg, environ={})


def test_internal_tokens_must_be_long_and_not_the_example() -> None:
    for token in ("short", "CHANGE-ME-to-a-long-random-string-of-many-chars"):
        with pytest.raises(ConfigError, match="at least 32"):
            load_settings(environ={"SELKIE_INTERNAL_TOKEN": token})
    good = "f" * 64
    assert load_settings(environ={"SELKIE_INTERNAL_TOKEN": good}).internal_token == good


def test_lists_come_from_commas_or_toml_arrays(tmp_path: Path) -> None:
    s = load_settings(environ={"SELKIE_STORAGE_ALLOWED_HOSTS": "ps.internal, 10.0.0.1,"})
    assert s.storage_allowed_hosts == ["ps.internal", "10.0.0.1"]
    cfg = tmp_path / "hosts.toml"
    cfg.write_text('storage_allowed_hosts = ["a.internal"]\n')
    assert load_settings(config_file=cfg, environ={}).storage_allowed_hosts == ["a.internal"]


def test_missing_file_and_bad_listen(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_settings(environ={"SELKIE_API_LISTEN": "localhost"})
    assert split_listen("[::1]:6033") == ("::1", 6033)
