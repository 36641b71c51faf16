"""A whole in-process platform for tests that run real mariadbd computes."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pymysql

from selkie.config import load_settings
from selkie.control import Created
from selkie.model import OperationAction, OperationStatus, Principal
from selkie.platform import Platform
from tests.conftest import need_service
from tests.helpers import free_port, seed_template


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
        environ["SELKIE_HTTP_LISTEN"] = f"127.0.0.1:{free_port()}"
    environ.update({f"SELKIE_{k.upper()}": v for k, v in env.items()})
    environ.update(aws or {})
    p = Platform.open(load_settings(environ=environ))
    await p.start(proxy=proxy)
    try:
        yield p
    finally:
        await p.stop()
        p.close()


def platform_address(platform: Platform, endpoint_id: str) -> str:
    from selkie.store.tables import EndpointRow

    with platform.store.read() as s:
        row = s.get(EndpointRow, endpoint_id)
        assert row is not None and row.compute_address
        return row.compute_address


async def request(platform: Platform, who: Principal, created: Created, action: OperationAction):  # type: ignore[no-untyped-def]
    ep, ops = await asyncio.to_thread(
        platform.control.endpoints.request, who, created.project.id, created.endpoints[0].id, action
    )
    await platform.runner.wait_idle()
    op = await asyncio.to_thread(
        platform.control.operations.get, who, created.project.id, ops[0].id
    )
    assert op.status is OperationStatus.FINISHED, op.error
    return platform.lifecycle.get(ep.id)


def sql(
    platform: Platform,
    endpoint_id: str,
    user: str,
    password: str,
    database: str | None,
    *statements: str,
) -> list[tuple]:  # type: ignore[type-arg]
    host, port = platform_address(platform, endpoint_id).rsplit(":", 1)
    conn = pymysql.connect(
        host=host,
        port=int(port),
        user=user,
        password=password,
        database=database,
        autocommit=True,
    )
    return run_and_close(conn, *statements)


def run_and_close(conn: pymysql.Connection, *statements: str) -> list[tuple]:  # type: ignore[type-arg]
    """Run ``statements`` on ``conn`` in order, close it; the last one's rows."""
    try:
        rows: list[tuple] = []  # type: ignore[type-arg]
        with conn.cursor() as cur:
            for stmt in statements:
                cur.execute(stmt)
                rows = list(cur.fetchall())
        return rows
    finally:
        conn.close()
