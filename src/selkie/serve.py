"""The processes: `selkie up` (the whole platform and its HTTP API on one event loop),
`selkie api` (an API replica), `selkie proxy` (a proxy replica) and `selkie safekeeper`
(the safekeeper and its binlog server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
from collections.abc import Callable, Iterator

import uvicorn

from selkie.api.app import create_app, create_internal_app
from selkie.api.console import ConsoleSettings
from selkie.api.safekeeper import create_safekeeper_app
from selkie.config import Settings, split_listen
from selkie.control.binlogs import default_listen
from selkie.control.bootstrap import FirstStart, first_start
from selkie.errors import ConfigError
from selkie.platform import Platform, make_proxy, open_settings_archive
from selkie.remote import HttpControlPlane
from selkie.safekeeper.accounts import ReplicationKey
from selkie.safekeeper.standalone import SafekeeperProcess

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM once it has
    stopped, killing the process before the computes are suspended."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGINT (Ctrl-C) and SIGTERM both mean: stop cleanly, suspending every compute."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def console_settings(settings: Settings, platform: Platform) -> ConsoleSettings:
    """What the console needs of this process: where its SQL editor sends statements (the
    in-process proxy's SQL-over-HTTP listener, else the configured one)."""
    front = platform.proxy.http if platform.proxy is not None else None
    sql_url = None
    sql_ca = None
    if front is not None:
        sql_ca = front.ssl_files[0] if front.ssl_files else None
        scheme = "https" if front.ssl_files else "http"
        host = "127.0.0.1" if front.host in ("0.0.0.0", "") else front.host  # noqa: S104
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        sql_url = f"{scheme}://{host}:{front.port}"
    elif settings.http_listen:
        host, port = split_listen(settings.http_listen)
        sql_url = f"http://{host}:{port}"
    return ConsoleSettings(
        sql_url=sql_url,
        sql_ca=sql_ca,
        proxy_host=settings.proxy_host,
        proxy_port=settings.proxy_port,
        secure_cookies=settings.effective_api_url.startswith("https://"),
    )


def banner(settings: Settings, first: FirstStart) -> str:
    api = settings.effective_api_url
    lines = [
        f"Selkie API on {api}  (docs: {api}/docs)",
        f"MySQL proxy on {settings.proxy_host}:{settings.proxy_port}",
    ]
    if settings.http_listen:
        lines.append(f"SQL over HTTP (database-js) on {settings.http_listen}")
    if settings.console:
        lines.append(f"Console on {api}/console  (sign in with an API key)")
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
    settings: Settings,
    *,
    proxy: bool = True,
    on_ready: Callable[[FirstStart], None] | None = None,
) -> None:
    """Run the API, the operations runner and the scheduler (and the proxy, unless
    ``proxy`` is false: `selkie api`) until stopped; then, in embedded mode, suspend every
    compute and exit. An API replica leaves computes running for the others."""
    platform = await asyncio.to_thread(Platform.open, settings)
    try:
        await platform.start(proxy=proxy)
        try:
            # Embedded: a first key and a demo project. API replicas: keys are made with
            # `selkie api-keys create` against the shared store.
            first = (
                await asyncio.to_thread(first_start, platform.control)
                if proxy
                else FirstStart(api_key=None, demo=None)
            )
            host, port = split_listen(settings.api_listen)
            config = uvicorn.Config(
                create_app(
                    platform.control,
                    runtime=platform,
                    control_plane=platform.access,
                    internal_token=settings.internal_token,
                    max_body_bytes=settings.api_max_body_bytes,
                    rate_limit=settings.api_rate_limit,
                    # With a listener of their own, the internal routes are not public.
                    internal_routes=not settings.internal_listen,
                    console=console_settings(settings, platform) if settings.console else None,
                ),
                host=host,
                port=port,
                log_level=settings.log_level,
                access_log=False,
                lifespan="on",
            )
            servers = [(_Server(config), settings.api_listen)]
            if settings.internal_listen:
                ihost, iport = split_listen(settings.internal_listen)
                internal = create_internal_app(platform.access, settings.internal_token)
                servers.append(
                    (
                        _Server(
                            uvicorn.Config(
                                internal,
                                host=ihost,
                                port=iport,
                                log_level=settings.log_level,
                                access_log=False,
                                lifespan="off",
                            )
                        ),
                        settings.internal_listen,
                    )
                )
            elif settings.internal_token:
                log.warning(
                    "internal routes are served on the public listener %s; set "
                    "SELKIE_INTERNAL_LISTEN to a private address to keep them apart",
                    settings.api_listen,
                )

            def stop() -> None:
                for server, _ in servers:
                    server.should_exit = True

            stop_on_signals(stop)
            if on_ready is not None:
                on_ready(first)
            await asyncio.gather(*(server.serve() for server, _ in servers))
            for server, listen in servers:
                if not server.started:
                    raise SystemExit(f"selkie: could not listen on {listen}")
        finally:
            await platform.stop(suspend_computes=proxy)
    finally:
        platform.close()


async def serve_proxy(settings: Settings) -> None:
    """`selkie proxy`. With ``internal_token`` and ``api_url`` set, a proxy replica that
    asks `selkie api` replicas over HTTP (no state store here); otherwise the proxy with an
    in-process control plane on the state store."""
    stopping = asyncio.Event()
    if settings.internal_token and settings.api_url:
        control = HttpControlPlane(
            settings.api_urls,
            settings.internal_token,
            wake_timeout=settings.proxy_wake_timeout + 5,
        )
        server = await make_proxy(settings, control)
        await server.start()
        stop_on_signals(stopping.set)
        try:
            await stopping.wait()
        finally:
            await server.stop()
            await control.close()
        return
    platform = await asyncio.to_thread(Platform.open, settings)
    try:
        await platform.start(proxy=True)
        stop_on_signals(stopping.set)
        try:
            await stopping.wait()
        finally:
            await platform.stop()
    finally:
        platform.close()


async def serve_safekeeper(
    settings: Settings, *, on_ready: Callable[[], None] | None = None
) -> None:
    """`selkie safekeeper`: the safekeeper (its dir, the archive), its binlog server on
    ``safekeeper_listen`` and its internal API on ``safekeeper_api_listen``, until stopped;
    then it ships what it can and exits."""
    if not settings.internal_token:
        raise ConfigError("selkie safekeeper needs SELKIE_INTERNAL_TOKEN (its API asks it)")
    if not settings.archive_enabled:
        raise ConfigError("selkie safekeeper needs an archive (SELKIE_ARCHIVE_URL is off)")
    process = SafekeeperProcess(
        root=settings.effective_safekeeper_dir,
        archive=open_settings_archive(settings),
        key=await asyncio.to_thread(
            ReplicationKey.load, settings.safekeeper_key, settings.data_dir
        ),
        listen=settings.safekeeper_listen or default_listen(settings.data_dir),
    )
    await process.start()
    try:
        host, port = split_listen(settings.safekeeper_api_listen)
        server = _Server(
            uvicorn.Config(
                create_safekeeper_app(process.safekeeper, process.key, settings.internal_token),
                host=host,
                port=port,
                log_level=settings.log_level,
                access_log=False,
                lifespan="off",
            )
        )

        def stop() -> None:
            server.should_exit = True

        stop_on_signals(stop)
        if on_ready is not None:
            on_ready()
        await server.serve()
        if not server.started:
            raise SystemExit(f"selkie: could not listen on {settings.safekeeper_api_listen}")
    finally:
        await process.stop()
