"""The console's state (sessions, templates, what it may show of this process) and the
helpers every page uses: who is signed in, rendering, redirects, errors as pages."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from selkie.api.console.charts import human_bytes
from selkie.api.console.sessions import COOKIE, ConsoleSession, ConsoleSessions, same_token
from selkie.api.deps import spend as spend_budget
from selkie.api.runtime import Runtime
from selkie.control import Control
from selkie.errors import Forbidden, SelkieError, Unauthorized, public_message
from selkie.model import Principal

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class ConsoleSettings:
    # Where the SQL editor sends statements: the proxy's SQL-over-HTTP listener.
    sql_url: str | None = None
    # How its TLS certificate is checked off loopback: the proxy's own certificate file
    # (the in-process listener's), or the system's CAs (None).
    sql_ca: str | None = None
    # The proxy's MySQL address as shown in connection commands.
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 6033
    # Cookies marked Secure (the API is served over HTTPS).
    secure_cookies: bool = False


class SignInNeeded(Exception):
    """No valid session: the page answers with a redirect to the sign-in form."""


@dataclass
class Seat:
    """A request's signed-in session and its principal."""

    session: ConsoleSession
    who: Principal


class Console:
    def __init__(
        self,
        control: Control,
        settings: ConsoleSettings,
        *,
        runtime: Runtime | None = None,
    ) -> None:
        self.control = control
        self.settings = settings
        # What the process runs (None: no computes here, see :class:`Runtime`).
        self.runtime = runtime
        self.sessions = ConsoleSessions()
        self.templates = Environment(
            loader=PackageLoader("selkie.api.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.templates.filters["when"] = _when
        self.templates.filters["bytes"] = human_bytes

    def seat(self, request: Request, *, spend: bool = True) -> Seat:
        """The request's signed-in session and principal; each page or form spends one
        request of the key's rate limit, as an API call does (``spend=False``: an error
        page shown for a request that was counted already)."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise SignInNeeded
        try:
            who = self.control.api_keys.principal(session.key_id)
        except Unauthorized as exc:
            self.sessions.close(session.id)
            raise SignInNeeded from exc
        if spend:
            spend_budget(request, who.key_id)
        return Seat(session, who)

    def checked(self, request: Request, form: dict[str, str]) -> Seat:
        """The seat of a form post carrying the session's CSRF token; Forbidden without."""
        seat = self.seat(request)
        if not same_token(form.get("csrf"), seat.session.csrf):
            raise Forbidden("the form's CSRF token is missing or wrong; reload the page")
        return seat

    def render(
        self, name: str, seat: Seat | None, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        flash: list[dict[str, Any]] = []
        if seat is not None:
            flash, seat.session.flash = seat.session.flash, []
        html = self.templates.get_template(name).render(
            seat=seat,
            csrf=seat.session.csrf if seat else "",
            flash=flash,
            now=datetime.now(UTC),
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def page(fn: Callable[P, Any]) -> Callable[P, Any]:
    """A console route: no session → the sign-in form; a Selkie error → an error page with
    its status and message (never a traceback or a path)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        request = kwargs["request"]
        assert isinstance(request, Request)
        console = console_of(request)
        try:
            result: Response = await fn(*args, **kwargs)
            return result
        except SignInNeeded:
            return RedirectResponse("/console/sign-in", status_code=303)
        except SelkieError as exc:
            status = exc.http_status
            if status >= 500:
                log.warning("console: %s", exc.message)
            message = public_message(exc) if status < 500 else "internal error; see the server log"
            try:
                seat: Seat | None = console.seat(request, spend=False)
            except SignInNeeded:
                seat = None
            return console.render("error.html", seat, status=status, message=message)

    return wrapper


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
