from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from selkie.config import load_settings, settings_table, split_listen
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


def test_the_readmes_table_names_every_setting_and_only_settings() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = {
        name
        for line in section.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`(SELKIE_[A-Z0-9_]+)`", line.split(" | ")[0])
    }
    settings = {env for env, _, _ in settings_table()}
    assert settings - named == set(), "settings the README does not list"
    assert named - settings == {"SELKIE_CONTEXT_FILE"}, "listed, but not settings"


def test_selkie_config_prints_what_runs_and_hides_secrets(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SELKIE_DATA_DIR": str(tmp_path),
        "SELKIE_PROXY_WAKE_TIMEOUT": "12",
        "SELKIE_DATABASE_URL": "postgresql+psycopg://app:hunter2@db.internal/selkie",
        "SELKIE_INTERNAL_TOKEN": "t" * 40,
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    }
    cli = Path(sys.executable).parent / "selkie"
    done = subprocess.run(
        [str(cli), "config", "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    rows = {r["setting"]: r for r in json.loads(done.stdout)}
    assert rows["SELKIE_PROXY_WAKE_TIMEOUT"]["value"] == "12.0"
    assert rows["SELKIE_PROXY_WAKE_TIMEOUT"]["default"] == "30.0"
    assert rows["SELKIE_DATA_DIR"]["value"] == str(tmp_path)
    assert rows["SELKIE_DATABASE_URL"]["value"] == "postgresql+psycopg://app:***@db.internal/selkie"
    assert rows["SELKIE_INTERNAL_TOKEN"]["value"] == "(set)"
    assert rows["SELKIE_S3_SECRET_ACCESS_KEY"]["value"] == "(set)"
    assert "hunter2" not in done.stdout and "aws-secret-value" not in done.stdout
    assert "t" * 40 not in done.stdout
    assert set(rows) == {env for env, _, _ in settings_table()}
