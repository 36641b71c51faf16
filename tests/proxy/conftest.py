"""Fixtures for proxy tests: a platform with its proxy on a free port, and a project; or,
for what the proxy answers before anything wakes, a proxy on a control plane in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from selkie.control import Created
from selkie.control.bootstrap import local_principal
from selkie.platform import Platform
from selkie.proxy.server import ProxyConfig, ProxyServer
from tests.controlplane import FakeControlPlane
from tests.platforms import open_platform


@pytest.fixture
async def platform(tmp_path: Path, template_datadir: Path) -> AsyncIterator[Platform]:
    async with open_platform(tmp_path, template_datadir, proxy=True) as p:
        yield p


@dataclass
class Db:
    """A project reachable through the proxy, with everything a client needs."""

    platform: Platform
    created: Created

    @property
    def endpoint_id(self) -> str:
        return self.created.endpoints[0].id

    @property
    def role(self) -> str:
        return self.created.roles[0].name

    @property
    def password(self) -> str:
        assert self.created.roles[0].password
        return self.created.roles[0].password

    @property
    def database(self) -> str:
        return self.created.databases[0].name

    @property
    def user(self) -> str:
        return f"{self.endpoint_id}.{self.role}"

    @property
    def port(self) -> int:
        assert self.platform.proxy is not None
        return self.platform.proxy.port

    @property
    def cert(self) -> Path:
        return self.platform.settings.data_dir / "tls" / "proxy-cert.pem"

    def state(self) -> str:
        return self.platform.lifecycle.get(self.endpoint_id).current_state.value

    async def update_endpoint(self, changes: dict[str, Any]) -> None:
        """Change the endpoint through the control plane, as the project's organization."""
        who = local_principal(self.platform.control)
        await asyncio.to_thread(
            self.platform.control.endpoints.update,
            who,
            self.created.project.id,
            self.endpoint_id,
            changes,
        )


@pytest.fixture
async def db(platform: Platform) -> Db:
    who = local_principal(platform.control)
    created = await asyncio.to_thread(platform.control.projects.create, who, name="proxied")
    await platform.runner.wait_idle()
    return Db(platform=platform, created=created)


@dataclass
class Faked:
    """A proxy (MySQL and HTTP listeners on free ports) on a control plane in memory with
    one role, ``user`` with ``password``; no compute behind it."""

    plane: FakeControlPlane
    proxy: ProxyServer
    endpoint_id: str = "ep-fake-000001"
    role: str = "owner"
    password: str = "s3cret"

    @property
    def user(self) -> str:
        return f"{self.endpoint_id}.{self.role}"

    @property
    def http_port(self) -> int:
        assert self.proxy.http is not None
        return self.proxy.http.port


@pytest.fixture
async def faked() -> AsyncIterator[Faked]:
    plane = FakeControlPlane()
    config = ProxyConfig(listen_port=0, http_listen=("127.0.0.1", 0), report_interval=60)
    proxy = ProxyServer(plane, config)
    faked = Faked(plane, proxy)
    plane.add_role(faked.endpoint_id, faked.role, faked.password)
    await proxy.start()
    try:
        yield faked
    finally:
        await proxy.stop()
