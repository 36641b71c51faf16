"""The console's pages and forms. Reads render a page; every form posts, is checked for the
session's CSRF token, acts through the services as the signed-in key, and redirects back
(post, redirect, get). Another organization's project is a 404 like a missing one."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from selkie.api.console import views
from selkie.api.console.app import Seat, console_of, page, redirect
from selkie.api.console.sessions import COOKIE, PRE_COOKIE, same_token
from selkie.api.console.sql import run_sql
from selkie.api.deps import ID_PATTERN, NAME_PATTERN, spend
from selkie.errors import Forbidden, InvalidInput, RateLimited, SelkieError, Unauthorized
from selkie.model import EndpointType, OperationAction

router = APIRouter(prefix="/console", include_in_schema=False)

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
Name = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
MAX_FORM = 1 << 20


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded form (the only kind the console's pages send)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidInput("send the form as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise InvalidInput("the form is too large")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


async def show(
    request: Request, template: str, view: Callable[..., dict[str, Any]], *args: str, **extra: Any
) -> Response:
    """A page: what ``view`` gathers for the signed-in key (in a worker thread: the services
    are synchronous), rendered with ``template``."""
    console = console_of(request)
    seat = console.seat(request)
    data = await run_in_threadpool(view, console, seat.who, *args)
    return console.render(template, seat, **data, **extra)


# --- signing in and out -------------------------------------------------------------------------


@router.get("")
async def home(request: Request) -> Response:
    console = console_of(request)
    signed_in = console.sessions.get(request.cookies.get(COOKIE)) is not None
    return redirect("/console/projects" if signed_in else "/console/sign-in")


@router.get("/sign-in")
async def sign_in_form(request: Request) -> Response:
    return _sign_in_page(request, error=None)


def _sign_in_page(request: Request, error: str | None, status: int = 200) -> Response:
    console = console_of(request)
    token = secrets.token_urlsafe(32)
    response = console.render("sign_in.html", None, status=status, pre=token, error=error)
    response.set_cookie(
        PRE_COOKIE,
        token,
        max_age=600,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=console.settings.secure_cookies,
    )
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    console = console_of(request)
    try:
        form = await form_of(request)
    except InvalidInput as exc:
        return _sign_in_page(request, exc.message, 400)
    if not same_token(form.get("pre"), request.cookies.get(PRE_COOKIE)):
        return _sign_in_page(request, "the form expired; try again", 403)
    try:
        who = await run_in_threadpool(console.control.api_keys.authenticate, form.get("key", ""))
    except Unauthorized:
        return _sign_in_page(request, "that API key is not valid", 401)
    try:
        spend(request, who.key_id)  # signing in is paced by the key's rate limit
    except RateLimited as exc:
        return _sign_in_page(request, exc.message, exc.http_status)
    session = console.sessions.open(who.key_id, who.org_id)
    response = RedirectResponse("/console/projects", status_code=303)
    response.set_cookie(
        COOKIE,
        session.id,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=console.settings.secure_cookies,
    )
    response.delete_cookie(PRE_COOKIE, path="/console")
    return response


@router.post("/sign-out")
@page
async def sign_out(request: Request) -> Response:
    console = console_of(request)
    seat = console.checked(request, await form_of(request))
    console.sessions.close(seat.session.id)
    response = redirect("/console/sign-in")
    response.delete_cookie(COOKIE, path="/console")
    return response


# --- projects -----------------------------------------------------------------------------------


@router.get("/projects")
@page
async def projects(request: Request) -> Response:
    console = console_of(request)
    seat = console.seat(request)
    items = await run_in_threadpool(views.projects, console.control, seat.who)
    return console.render("projects.html", seat, projects=items)


@router.post("/projects")
@page
async def create_project(request: Request) -> Response:
    console = console_of(request)
    form = await form_of(request)
    seat = console.checked(request, form)
    created = await run_in_threadpool(
        console.control.projects.create, seat.who, name=form.get("name") or None
    )
    _flash_password(seat, created.roles[0].name, created.roles[0].password)
    return redirect(f"/console/projects/{created.project.id}")


@router.post("/projects/{project_id}/delete")
@page
async def delete_project(request: Request, project_id: Id) -> Response:
    console = console_of(request)
    seat = console.checked(request, await form_of(request))
    await run_in_threadpool(console.control.projects.delete, seat.who, project_id)
    return redirect("/console/projects")


@router.get("/projects/{project_id}")
@page
async def project(request: Request, project_id: Id) -> Response:
    return await show(request, "project.html", views.project, project_id)


@router.post("/projects/{project_id}/branches")
@page
async def create_branch(request: Request, project_id: Id) -> Response:
    console = console_of(request)
    form = await form_of(request)
    seat = console.checked(request, form)
    endpoints = [{"type": "read_write"}] if form.get("compute") else []
    await run_in_threadpool(
        lambda: console.control.branches.create(
            seat.who,
            project_id,
            name=form.get("name") or None,
            parent_id=form.get("parent_id") or None,
            endpoints=endpoints,
        )
    )
    return redirect(f"/console/projects/{project_id}")


# --- endpoints ----------------------------------------------------------------------------------


@router.get("/projects/{project_id}/endpoints/{endpoint_id}")
@page
async def endpoint(request: Request, project_id: Id, endpoint_id: Id) -> Response:
    console = console_of(request)
    seat = console.seat(request)
    data = await run_in_threadpool(views.endpoint, console, seat.who, project_id, endpoint_id)
    runtime = console.runtime
    if data["endpoint"].type is EndpointType.READ_ONLY and runtime is not None:
        # Asked of its running compute's server (nothing while it is suspended).
        with contextlib.suppress(SelkieError):
            data["replication"] = await runtime.replica_status(endpoint_id)
    return console.render("endpoint.html", seat, **data)


@router.get("/projects/{project_id}/endpoints/{endpoint_id}/state")
@page
async def endpoint_state(request: Request, project_id: Id, endpoint_id: Id) -> Response:
    """The endpoint's state alone, for the pages to refresh it in place."""
    console = console_of(request)
    seat = console.seat(request)
    ep = await run_in_threadpool(console.control.endpoints.get, seat.who, project_id, endpoint_id)
    state = views.state_of(ep)
    return HTMLResponse(
        console.templates.get_template("state.html").render(state=state),
        headers={"Cache-Control": "no-store"},
    )


@router.post("/projects/{project_id}/endpoints/{endpoint_id}/{action}")
@page
async def endpoint_action(
    request: Request, project_id: Id, endpoint_id: Id, action: str
) -> Response:
    console = console_of(request)
    form = await form_of(request)
    seat = console.checked(request, form)
    ctl = console.control
    if action in ("start", "suspend", "restart"):
        wanted = {
            "start": OperationAction.START_COMPUTE,
            "suspend": OperationAction.SUSPEND_COMPUTE,
            "restart": OperationAction.RESTART_COMPUTE,
        }[action]
        await run_in_threadpool(ctl.endpoints.request, seat.who, project_id, endpoint_id, wanted)
    elif action == "settings":
        changes = views.endpoint_changes(form)
        await run_in_threadpool(ctl.endpoints.update, seat.who, project_id, endpoint_id, changes)
    else:
        raise InvalidInput(f"no endpoint action {action!r}")
    back = form.get("back") or ""
    if back != "endpoint":
        return redirect(f"/console/projects/{project_id}")
    return redirect(f"/console/projects/{project_id}/endpoints/{endpoint_id}")


# --- roles and databases ------------------------------------------------------------------------


@router.post("/projects/{project_id}/branches/{branch_id}/roles")
@page
async def create_role(request: Request, project_id: Id, branch_id: Id) -> Response:
    console = console_of(request)
    form = await form_of(request)
    seat = console.checked(request, form)
    role, _ = await run_in_threadpool(
        lambda: console.control.roles.create(
            seat.who, project_id, branch_id, name=form.get("name", "")
        )
    )
    _flash_password(seat, role.name, role.password)
    return redirect(f"/console/projects/{project_id}")


@router.post("/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reset")
@page
async def reset_password(
    request: Request, project_id: Id, branch_id: Id, role_name: Name
) -> Response:
    console = console_of(request)
    seat = console.checked(request, await form_of(request))
    role, _ = await run_in_threadpool(
        console.control.roles.reset_password, seat.who, project_id, branch_id, role_name
    )
    _flash_password(seat, role.name, role.password)
    return redirect(f"/console/projects/{project_id}")


@router.post("/projects/{project_id}/branches/{branch_id}/databases")
@page
async def create_database(request: Request, project_id: Id, branch_id: Id) -> Response:
    console = console_of(request)
    form = await form_of(request)
    seat = console.checked(request, form)
    await run_in_threadpool(
        lambda: console.control.databases.create(
            seat.who,
            project_id,
            branch_id,
            name=form.get("name", ""),
            owner_name=form.get("owner", ""),
        )
    )
    return redirect(f"/console/projects/{project_id}")


def _flash_password(seat: Seat, role: str, password: str | None) -> None:
    if password:
        seat.session.flash.append({"role": role, "password": password})


# --- usage and the SQL editor -------------------------------------------------------------------


@router.get("/projects/{project_id}/usage")
@page
async def usage(request: Request, project_id: Id) -> Response:
    return await show(request, "usage.html", views.usage, project_id)


@router.get("/projects/{project_id}/sql")
@page
async def sql_editor(request: Request, project_id: Id) -> Response:
    return await show(request, "sql.html", views.sql_targets, project_id, form={}, result=None)


@router.post("/projects/{project_id}/sql")
@page
async def sql_run(request: Request, project_id: Id) -> Response:
    console = console_of(request)
    form = await form_of(request)
    seat = console.checked(request, form)
    view = await run_in_threadpool(views.sql_targets, console, seat.who, project_id)
    if form.get("endpoint_id") not in {e.id for e in view["endpoints"]}:
        raise Forbidden("choose one of this project's endpoints")
    result = await run_sql(console.settings.sql_url, form, ca=console.settings.sql_ca)
    shown = {k: v for k, v in form.items() if k not in ("password", "csrf")}
    return console.render("sql.html", seat, form=shown, result=result, **view)


__all__ = ["router"]
