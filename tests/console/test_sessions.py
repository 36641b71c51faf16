"""Console sessions cannot be used against other organizations (security review: a global
table of 10,000 sessions, least recently used evicted, with unpaced sign-in let any key
holder sign out every other organization's users). An organization holds a bounded number
of sessions and evicts only its own; the table full, the organization holding the most
gives way; sign-ins and pages spend the key's rate limit like API calls. The console runs
in this process (Starlette's test client against the real app and control plane)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from selkie.api.app import create_app
from selkie.api.console import ConsoleSettings
from selkie.api.console.sessions import COOKIE, ConsoleSessions
from selkie.api.ratelimit import RateLimiter
from selkie.control import Control
from selkie.model import Principal


def console_app(control: Control, *, per_org: int = 3, limit: int = 10, rate: float = 0):
    app = create_app(control, console=ConsoleSettings())  # type: ignore[arg-type]
    app.state.console.sessions = ConsoleSessions(per_org=per_org, limit=limit)
    # The clock stands still: the budget is spent by the requests alone, however slow.
    app.state.rate_limiter = RateLimiter(rate, clock=lambda: 1000.0) if rate else None
    return app


def sign_in(app: object, key: str) -> TestClient:
    """A browser of its own signed in with ``key`` (its session cookie set)."""
    browser = TestClient(app, raise_server_exceptions=False)  # type: ignore[arg-type]
    form = browser.get("/console/sign-in")
    pre = re.search(r'name="pre" value="([^"]+)"', form.text)
    assert pre is not None, form.text
    r = browser.post(
        "/console/sign-in", data={"pre": pre.group(1), "key": key}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    assert browser.cookies.get(COOKIE)
    return browser


def signed_in(browser: TestClient) -> bool:
    r = browser.get("/console/projects", follow_redirects=False)
    assert r.status_code in (200, 303), r.text
    return r.status_code == 200


def key_of(control: Control, admin: Principal, org: str) -> str:
    org_id = admin.org_id if org == "default" else control.organizations.create(admin, name=org).id
    return control.api_keys.create(admin, name=f"{org}-key", org_id=org_id)[1]


def test_signing_in_over_and_over_signs_out_only_ones_own_organization(
    control: Control, admin: Principal
) -> None:
    app = console_app(control, per_org=3, limit=10)
    victim = sign_in(app, key_of(control, admin, "default"))
    noisy = key_of(control, admin, "noisy")
    mine = [sign_in(app, noisy) for _ in range(3)]
    assert signed_in(victim) and all(signed_in(b) for b in mine)
    for _ in range(30):  # ten times the table's size
        sign_in(app, noisy)
    sessions = app.state.console.sessions
    assert sessions.count() == 4 and sessions.count(sessions_org(app, victim)) == 1
    assert signed_in(victim)
    assert not any(signed_in(b) for b in mine)  # its own oldest went


def sessions_org(app: object, browser: TestClient) -> str:
    session = app.state.console.sessions.get(browser.cookies.get(COOKIE))  # type: ignore[attr-defined]
    assert session is not None
    return str(session.org_id)


def test_a_full_table_evicts_from_the_organization_holding_the_most(
    control: Control, admin: Principal
) -> None:
    app = console_app(control, per_org=3, limit=4)
    big = key_of(control, admin, "big")
    small = sign_in(app, key_of(control, admin, "default"))
    first_big = sign_in(app, big)
    others = [sign_in(app, big) for _ in range(2)]  # the table is full: 1 + 3
    newcomer = sign_in(app, key_of(control, admin, "newcomer"))
    assert signed_in(small) and signed_in(newcomer) and all(signed_in(b) for b in others)
    assert not signed_in(first_big)


def test_sign_in_and_pages_spend_the_keys_rate_limit(control: Control, admin: Principal) -> None:
    app = console_app(control, rate=5)  # a burst of 10 requests, no refill
    key = key_of(control, admin, "default")
    browser = sign_in(app, key)  # one
    pages = [browser.get("/console/projects").status_code for _ in range(12)]
    assert pages == [200] * 9 + [429] * 3
    page = browser.get("/console/projects")
    assert page.status_code == 429 and "requests a second from this API key" in page.text
    again = TestClient(app, raise_server_exceptions=False)
    form = again.get("/console/sign-in")
    pre = re.search(r'name="pre" value="([^"]+)"', form.text)
    assert pre is not None
    refused = again.post("/console/sign-in", data={"pre": pre.group(1), "key": key})
    assert refused.status_code == 429 and "retry in" in refused.text
    assert not again.cookies.get(COOKIE)
    # Another key's budget is its own.
    assert signed_in(sign_in(app, key_of(control, admin, "other")))
