"""`selkie up|api|proxy|safekeeper` run the platform's processes; `selkie api-keys create`
works on the local state store, without a server."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from contextlib import suppress
from typing import Annotated, Any

import typer

from selkie.cli.common import ConfigOpt, Output, OutputOpt, emit, fail, failures, settings
from selkie.config import Settings

keys_app = typer.Typer(no_args_is_help=True, help="API keys (local store, no server needed).")
archive_app = typer.Typer(
    no_args_is_help=True, help="The archive of branch history (read with this host's settings)."
)


def up(config: ConfigOpt = None) -> None:
    """Run the whole platform in this process (API, proxy, scheduler). Ctrl-C stops."""
    from selkie.serve import banner, serve

    s = settings(config)
    _run_server(s, serve(s, on_ready=lambda first: print(banner(s, first))))


def _run_server(s: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Logging as configured, then ``main`` on the configured event loop until Ctrl-C."""
    import logging

    from selkie import eventloop

    logging.basicConfig(
        level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Not every request between processes (the safekeeper's, the proxy replicas').
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with failures(), suppress(KeyboardInterrupt):
        eventloop.run(main, s.event_loop)


def api(config: ConfigOpt = None) -> None:
    """Run an API replica: REST API, operations runner, scheduler (one leader among the
    replicas on a PostgreSQL store) and, with SELKIE_INTERNAL_TOKEN, the internal routes
    that `selkie proxy` replicas use. No proxy; computes keep running when it stops."""

    from selkie.serve import serve

    s = settings(config)

    def ready(_: object) -> None:
        print(f"Selkie API replica on {s.effective_api_url}", flush=True)

    _run_server(s, serve(s, proxy=False, on_ready=ready))


def proxy(config: ConfigOpt = None) -> None:
    """Run the MySQL-protocol proxy alone. With SELKIE_INTERNAL_TOKEN and SELKIE_API_URL
    (comma-separated for several), a replica asking `selkie api` replicas; otherwise with
    an in-process control plane on the state store. Ctrl-C stops."""
    from selkie.serve import serve_proxy

    s = settings(config)
    _run_server(s, serve_proxy(s))


def safekeeper(config: ConfigOpt = None) -> None:
    """Run the safekeeper as a process of its own: it follows the computes the control
    plane (SELKIE_SAFEKEEPER_URL) asks it to, archives their log and serves timelines'
    binlogs on SELKIE_SAFEKEEPER_LISTEN. Its API (SELKIE_SAFEKEEPER_API_LISTEN) needs
    SELKIE_INTERNAL_TOKEN. Ctrl-C stops."""
    from selkie.serve import serve_safekeeper

    s = settings(config)

    def ready() -> None:
        print(f"Selkie safekeeper API on {s.safekeeper_api_listen}", flush=True)

    _run_server(s, serve_safekeeper(s, on_ready=ready))


@keys_app.command("create")
def api_keys_create(
    name: Annotated[str, typer.Option("--name", help="A name for the key")],
    org: Annotated[str | None, typer.Option("--org", help="Organization id")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May manage organizations")] = False,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create an API key in the local state store. Table output is the key alone on stdout,
    for scripts; json and yaml add its id, name and organization."""
    from selkie.control import Control
    from selkie.control.bootstrap import local_principal
    from selkie.store import Store

    s = settings(config)
    with failures():
        store = Store(s.effective_database_url)
        try:
            control = Control.open(store, s)
            key, secret = control.api_keys.create(
                local_principal(control), name=name, org_id=org, admin=admin
            )
        finally:
            store.close()
    if output is Output.table:
        sys.stdout.write(secret + "\n")
        return
    emit(
        {"id": key.id, "key": secret, "name": key.name, "org_id": key.org_id, "admin": key.admin},
        output,
    )


@archive_app.command("verify")
def archive_verify(
    project: Annotated[
        str | None, typer.Option("--project", help="One project's history (default: all)")
    ] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Read back every base image, delta chain and log segment of the archive the settings
    name (SELKIE_ARCHIVE_URL and the AWS variables), checking digests, checksums and that the
    log has no gap; changes nothing. Exit 1 when anything is missing or corrupt."""
    import asyncio

    from selkie.platform import open_settings_archive
    from selkie.storage.verify import verify

    s = settings(config)

    async def run() -> dict[str, Any]:
        archive = open_settings_archive(s)
        try:
            report = await verify(archive, project)
        finally:
            await archive.close()
        return {
            "ok": report.ok,
            "timelines": report.timelines,
            "images": report.images,
            "chunks": report.chunks,
            "segments": report.segments,
            "bytes_read": report.bytes_read,
            "findings": [{"key": f.key, "problem": f.problem} for f in report.findings],
        }

    if not s.archive_enabled:
        fail("durable storage is off here (SELKIE_ARCHIVE_URL=off): no archive to verify")
    with failures():
        result = asyncio.run(run())
    if output is Output.table:
        print(
            f"{result['timelines']} timelines, {result['images']} base images, "
            f"{result['chunks']} chunks, {result['segments']} log segments "
            f"({result['bytes_read']} bytes read)"
        )
        for f in result["findings"]:
            print(f"{f['key']}: {f['problem']}")
        print("archive ok" if result["ok"] else f"{len(result['findings'])} problems found")
    else:
        emit(result, output)
    if not result["ok"]:
        raise typer.Exit(1)
