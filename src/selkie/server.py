"""`selkie up`: the whole platform in one process, on one asyncio event loop."""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from selkie.api.app import create_app
from selkie.config import Settings, split_listen
from selkie.control import Control
from selkie.control.bootstrap import FirstStart, first_start
from selkie.store import Store

log = logging.getLogger(__name__)


@dataclass
class Platform:
    settings: Settings
    store: Store
    control: Control


def open_platform(settings: Settings) -> Platform:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.effective_database_url)
    return Platform(settings=settings, store=store, control=Control.open(store, settings))


def banner(settings: Settings, first: FirstStart) -> str:
    lines = [
        f"Selkie API on {settings.effective_api_url}  (docs: {settings.effective_api_url}/docs)"
    ]
    if first.api_key:
        lines += [
            "",
            "First start: created an API key. It is shown this once; keep it:",
            f"  export SELKIE_API_KEY={first.api_key}",
        ]
    if first.demo is not None:
        demo = first.demo
        role = demo.roles[0]
        db = demo.databases[0]
        ep = demo.endpoints[0]
        lines += [
            "",
            f"Created project 'demo' ({demo.project.id}); its password is shown this once.",
            f"  connection URI: {demo.connection_uris[0].connection_uri}",
            "  connect:        "
            + shlex.join(
                [
                    "mariadb",
                    "-h",
                    settings.proxy_host,
                    "-P",
                    str(settings.proxy_port),
                    "-u",
                    f"{ep.id}.{role.name}",
                    f"-p{role.password}",
                    db.name,
                ]
            ),
        ]
    lines += ["", "Ctrl-C stops."]
    return "\n".join(lines)


async def serve(
    settings: Settings, *, on_ready: Callable[[FirstStart], None] | None = None
) -> None:
    """Run the API (and, as they land, proxy, operations runner and scheduler) until stopped."""
    platform = await asyncio.to_thread(open_platform, settings)
    try:
        first = await asyncio.to_thread(first_start, platform.control)
        host, port = split_listen(settings.api_listen)
        config = uvicorn.Config(
            create_app(platform.control),
            host=host,
            port=port,
            log_level=settings.log_level,
            access_log=False,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        if on_ready is not None:
            on_ready(first)
        await server.serve()
        if not server.started:
            raise SystemExit(f"selkie: the API could not listen on {settings.api_listen}")
    finally:
        platform.store.close()
