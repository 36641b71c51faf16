"""Helpers for tests that run `selkie` as a real process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pymysql

SELKIE = [sys.executable, "-m", "selkie.cli"]


def seed_template(template: Path, data_dir: Path) -> None:
    """``data_dir`` starts with a copy of ``template`` (the session's template_datadir, see
    tests/conftest.py): its platform makes no template of its own."""
    target = data_dir / "template"
    if not target.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(template, target, symlinks=True, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    # A hard link: Selkie only ever copies a template (into a branch's datadir), never
    # writes one, so the links save 50 MB of writes a platform. Another filesystem (an
    # XFS image) gets a copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def selkie_process(
    command: str,
    env: dict[str, str],
    log: Path,
    *,
    health_url: str | None = None,
    port: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `selkie COMMAND` until it answers on ``health_url`` (or accepts on ``port``);
    stop it with SIGINT afterwards, if it still runs."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([*SELKIE, command], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"selkie {command} exited {proc.returncode}:\n{log.read_text()}"
                )
            try:
                if health_url is not None:
                    if httpx.get(health_url, timeout=1).status_code == 200:
                        break
                elif port is not None:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
            except (httpx.TransportError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"selkie {command} did not answer:\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def selkie_up(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with selkie_process("up", env, log, health_url=f"{env['SELKIE_API_URL']}/healthz") as proc:
        yield proc


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SELKIE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"selkie {' '.join(args)} failed: {result.stderr}{result.stdout}")
    return result


def selkie_env(tmp_path: Path, template: Path | None = None) -> dict[str, str]:
    """The environment of a `selkie` process on its own data dir and ports; with
    ``template`` (the session's template_datadir) the data dir starts with a copy of it, so
    the first start runs no mariadb-install-db."""
    port = free_port()
    e = {k: v for k, v in os.environ.items() if not k.startswith("SELKIE_")}
    e.update(
        SELKIE_DATA_DIR=str(tmp_path / "data"),
        SELKIE_API_LISTEN=f"127.0.0.1:{port}",
        SELKIE_PROXY_LISTEN=f"127.0.0.1:{free_port()}",
        SELKIE_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
        SELKIE_API_URL=f"http://127.0.0.1:{port}",
        COLUMNS="200",
    )
    if template is not None:
        seed_template(template, tmp_path / "data")
    return e


def first_key(log: Path) -> str:
    line = next(x for x in log.read_text().splitlines() if "SELKIE_API_KEY=" in x)
    return line.split("SELKIE_API_KEY=", 1)[1].strip()


def api_client(env: dict[str, str], log: Path) -> httpx.Client:
    """An API client for a `selkie up` started with ``env``, with the key it printed."""
    return httpx.Client(
        base_url=env["SELKIE_API_URL"],
        headers={"Authorization": f"Bearer {first_key(log)}"},
        timeout=30,
    )


def mariadbd_processes(data_dir: Path) -> dict[str, int]:
    """Every mariadbd started with a config under this data dir, by endpoint id."""
    found = {}
    marker = f"--defaults-file={data_dir.resolve()}/computes/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode().split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        for arg in args:
            if arg.startswith(marker) and state != "Z":
                found[arg[len(marker) :].split("/")[0]] = int(entry.name)
    return found


def connect(env: dict[str, str], user: str, password: str, db: str) -> pymysql.Connection:  # type: ignore[type-arg,unused-ignore]
    """A client of a `selkie up` (``env``) through its proxy, as a tenant connects."""
    port = int(env["SELKIE_PROXY_LISTEN"].rsplit(":", 1)[1])
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        password=password,
        database=db,
        autocommit=True,
        connect_timeout=60,
        read_timeout=60,
    )
