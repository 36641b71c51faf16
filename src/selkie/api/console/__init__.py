"""The web console at ``/console``: pages rendered on the server (Jinja2, autoescaped) from
the same services the REST API calls, with a little JavaScript of its own for live states,
copy buttons and the SQL editor. Sign-in is an API key, kept only as a server-side session
(``sessions``); every form carries a CSRF token. Tenants see only their organization's
projects: everything goes through the services with the session's principal."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from selkie.api.console.app import Console, ConsoleSettings
from selkie.api.console.routes import router

STATIC = Path(__file__).parent / "static"

__all__ = ["Console", "ConsoleSettings", "install"]


def install(app: FastAPI, console: Console) -> None:
    app.state.console = console
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(router)
