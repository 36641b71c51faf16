"""Page-server storage: computes of a patched MariaDB that read pages from our users' page
server and send their log to a safekeeper, keeping no local state.

Stock MariaDB has none of the ``innodb_page_server_*`` options: a compute in this mode needs
the patched ``mariadbd`` (``SELKIE_PAGESERVER_MARIADBD``). What is tested here is what can
be without that server: the rendered options and the preflight that refuses to start a
compute whose page server does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import httpx

from selkie.errors import StorageError
from selkie.model import ProjectSettings, StorageMode
from selkie.storage.base import ParentState, StorageDriver

log = logging.getLogger(__name__)
PING_PATH = "/api/v1/ping"


def page_server_options(settings: ProjectSettings) -> dict[str, str]:
    """The server options that point a patched mariadbd at the remote storage."""
    if settings.storage_mode is not StorageMode.PAGESERVER:
        raise StorageError("project does not use pageserver storage")
    if not settings.page_server_address or settings.page_server_port is None:
        raise StorageError("pageserver storage needs page_server_address and page_server_port")
    options = {
        "innodb_page_server_enabled": "ON",
        "innodb_page_server_address": settings.page_server_address,
        "innodb_page_server_port": str(settings.page_server_port),
    }
    if settings.safekeeper_url:
        options["innodb_safekeeper_url"] = settings.safekeeper_url
    return options


class PageServerStorage(StorageDriver):
    """Branch data lives in the page server; a compute gets only a scratch directory, made
    from the local template (system tables) and thrown away when the compute goes."""

    def __init__(self, *, data_dir: Path, template: StorageDriver, timeout: float = 2.0) -> None:
        self.scratch = (data_dir / "scratch").resolve()
        self.template = template
        self.timeout = timeout

    def compute_datadir(self, branch_id: str, endpoint_id: str) -> Path:
        return self.scratch / endpoint_id

    def branch_exists(self, branch_id: str) -> bool:
        # The page server owns branch data; Selkie has nothing to make for it.
        return True

    async def create_branch(
        self, branch_id: str, *, parent: ParentState | None, settings: ProjectSettings
    ) -> None:
        await self.ping(settings)

    async def ping(self, settings: ProjectSettings) -> None:
        options = page_server_options(settings)
        where = f"{options['innodb_page_server_address']}:{options['innodb_page_server_port']}"
        # What goes wrong is logged here; the error (shown to the tenant) says only that.
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                resp = await client.get(f"http://{where}{PING_PATH}")
        except httpx.HTTPError as exc:
            log.warning("page server %s does not answer: %r", where, exc)
            raise StorageError(f"page server {where} does not answer") from None
        if resp.status_code != 200:
            log.warning("page server %s answered %d: %.200s", where, resp.status_code, resp.text)
            raise StorageError(f"page server {where} answered HTTP {resp.status_code} to a ping")

    async def prepare_compute(
        self, branch_id: str, endpoint_id: str, settings: ProjectSettings
    ) -> dict[str, str]:
        await self.ping(settings)
        from selkie.storage.local import LocalStorage

        scratch = self.compute_datadir(branch_id, endpoint_id)
        # Local computes get a scratch copy of the template; a Kubernetes compute's image
        # makes its own in the pod's empty volume.
        if isinstance(self.template, LocalStorage) and not (scratch / "mysql").is_dir():
            source = await self.template.ensure_template()
            await asyncio.to_thread(shutil.rmtree, scratch, True)
            await asyncio.to_thread(shutil.copytree, source, scratch, symlinks=True)
        return page_server_options(settings)

    async def delete_branch(self, branch_id: str) -> None:
        return None

    async def branch_size(self, branch_id: str) -> int | None:
        return None
