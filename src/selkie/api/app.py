"""The REST API application."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from selkie import __version__
from selkie.api import errors, schemas
from selkie.api.console import Console, ConsoleSettings
from selkie.api.console import install as install_console
from selkie.api.deps import Who
from selkie.api.limits import DEFAULT_MAX_BODY, BodyLimit
from selkie.api.ratelimit import RateLimiter
from selkie.api.routes import branches, endpoints, internal, keys, operations, projects, roles
from selkie.api.runtime import Runtime
from selkie.control import Control
from selkie.controlplane import ControlPlane
from selkie.errors import Forbidden


def create_app(
    control: Control,
    *,
    runtime: Runtime | None = None,
    control_plane: ControlPlane | None = None,
    internal_token: str = "",
    max_body_bytes: int = DEFAULT_MAX_BODY,
    rate_limit: float = 0.0,
    internal_routes: bool = True,
    console: ConsoleSettings | None = None,
) -> FastAPI:
    """The REST API over ``control``. ``runtime``: the computes, proxy and scheduler of
    the process serving it, where it runs them (see :class:`Runtime`)."""
    app = FastAPI(
        title="Selkie API",
        version=__version__,
        description=(
            "Serverless MariaDB control plane. Shaped like Neon's v2 API: projects, branches, "
            "endpoints, roles, databases, operations, API keys. Every /v1 route needs "
            "`Authorization: Bearer <api key>`."
        ),
        responses={
            401: {"model": schemas.ErrorBody, "description": "Missing or invalid API key"},
            404: {"model": schemas.ErrorBody, "description": "Not found"},
            422: {"model": schemas.ErrorBody, "description": "Invalid input"},
        },
    )
    app.state.control = control
    # Pool metrics, durability, schema diffs, replication: where computes run in-process.
    app.state.runtime = runtime
    # The ControlPlane that internal routes serve to proxy replicas (with the token).
    app.state.control_plane = control_plane
    app.state.internal_token = internal_token
    # Requests a second per API key (0: no limit).
    app.state.rate_limiter = RateLimiter(rate_limit) if rate_limit > 0 else None
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    def healthz() -> schemas.Health:
        return schemas.Health(
            status="ok", leader=runtime.is_leader() if runtime is not None else None
        )

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(who: Who) -> PlainTextResponse:
        """Prometheus metrics of this process (an admin API key)."""
        if not who.admin:
            raise Forbidden("metrics need an admin API key")
        body = runtime.prometheus() if runtime is not None else b""
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    for module in (projects, branches, endpoints, roles, operations, keys):
        app.include_router(module.router)
    app.include_router(projects.consumption_router)
    if internal_routes:
        app.include_router(internal.router)
    if console is not None:
        install_console(app, Console(control, console, runtime=runtime))
    return app


def create_internal_app(control_plane: ControlPlane, internal_token: str) -> FastAPI:
    """The internal routes alone (what proxy replicas ask the control plane), for a
    listener of their own on a private address."""
    app = FastAPI(title="Selkie internal API", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.control_plane = control_plane
    app.state.internal_token = internal_token
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=DEFAULT_MAX_BODY)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(internal.router)
    return app
