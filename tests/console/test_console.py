"""The console in a real browser: Debian's headless Chromium driven by Selenium against a
real `selkie up` (computes, proxy, SQL over HTTP). Sign-in, the project list, a new branch,
an endpoint's state changing without a reload, the SQL editor waking the endpoint and
returning rows, a form post without its CSRF token refused, another organization's project
a 404, sign-out. Screenshots of the main pages are saved and checked not to be blank."""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import api_client, first_key, run, selkie_env, selkie_up

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the console tests need {missing} (make setup installs them)")
        pytest.skip(f"no headless browser here: {missing}")


@dataclass
class Up:
    url: str
    key: str
    password: str
    user: str
    project_id: str
    shots: Path
    api: httpx.Client
    env: dict[str, str]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, template_datadir: Path) -> Iterator[Up]:
    _need_browser()
    tmp = tmp_path_factory.mktemp("console")
    env = selkie_env(tmp, template_datadir)
    log = tmp / "selkie.log"
    with selkie_up(env, log):
        text = log.read_text()
        connect = re.search(r"-u (\S+) -p(\S+)", text)
        assert connect is not None, text
        api = api_client(env, log)
        project_id = api.get("/v1/projects").json()["projects"][0]["id"]
        shots = tmp / "screenshots"
        shots.mkdir()
        yield Up(
            url=env["SELKIE_API_URL"],
            key=first_key(log),
            password=connect.group(2),
            user=connect.group(1),
            project_id=project_id,
            shots=shots,
            api=api,
            env=env,
        )
        api.close()


@pytest.fixture(scope="module")
def browser(up: Up) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, timeout: float = 30):  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # A form post navigates: an element looked up just before may belong to the old page.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored)
    return wait.until(lambda d: predicate(d))


def _text(driver, css: str) -> str:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import NoSuchElementException

    # One script, not a lookup and then a read: the page re-renders parts of itself (a state
    # that changes without a reload), and an element found a moment before may be gone.
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css
    )
    if text is None:
        raise NoSuchElementException(css)
    return str(text)


def _click(driver, css: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, css).click()


def _type(driver, css: str, value: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, css)
    field.clear()
    field.send_keys(value)


def _shot(driver, up: Up, name: str) -> None:  # type: ignore[no-untyped-def]
    path = up.shots / f"{name}.png"
    driver.save_screenshot(str(path))
    assert not_blank(path.read_bytes()), f"{name}: the screenshot is blank"


def not_blank(png: bytes) -> bool:
    """More than a handful of distinct pixel bytes in the PNG's image data (a blank page is
    one color)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data = 8, b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        if kind == b"IDAT":
            data += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(data))) > 16


def _sign_in(driver, up: Up, key: str) -> None:  # type: ignore[no-untyped-def]
    driver.get(f"{up.url}/console/sign-in")
    _type(driver, "#key", key)
    _click(driver, "#sign-in button")


def test_sign_in_projects_branch_state_and_sql(browser, up: Up) -> None:  # type: ignore[no-untyped-def]
    d = browser
    d.get(f"{up.url}/console")
    assert d.current_url.endswith("/console/sign-in")  # no session yet
    _sign_in(d, up, "not-a-key")
    # The click may return before the form's post has come back: wait for its page.
    _wait(d, lambda d: _text(d, "#error"))
    assert "not valid" in _text(d, "#error")
    _shot(d, up, "sign-in")
    _sign_in(d, up, up.key)
    _wait(d, lambda d: d.current_url.endswith("/console/projects"))
    assert "demo" in _text(d, "#projects")
    cookie = next(c for c in d.get_cookies() if c["name"] == "selkie_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert up.key not in str(d.get_cookies())  # the key itself is never in the browser
    _shot(d, up, "projects")

    # The project: its branch tree; a new branch appears under its parent.
    d.get(f"{up.url}/console/projects/{up.project_id}")
    _type(d, "#branch-name", "feature")
    _click(d, "#new-branch button")
    _wait(d, lambda d: "feature" in _text(d, "#branches"))
    assert (
        d.find_element("css selector", '[data-branch="feature"]')
        .get_attribute("class")
        .endswith("depth-1")
    )
    # A branch that expires says when.
    listed = up.api.get(f"/v1/projects/{up.project_id}/branches").json()["branches"]
    feature_id = next(b["id"] for b in listed if b["name"] == "feature")
    r = up.api.patch(
        f"/v1/projects/{up.project_id}/branches/{feature_id}",
        json={"branch": {"expires_at": "2099-01-01T00:00:00Z"}},
    )
    assert r.status_code == 200, r.text
    d.get(f"{up.url}/console/projects/{up.project_id}")
    assert "expires 2099-01-01" in _text(d, f"#expires-{feature_id}")
    _shot(d, up, "project")

    # A read-only endpoint is tagged in the tree, and its branch gets a read-pool address.
    branch_id = up.api.get(f"/v1/projects/{up.project_id}/branches").json()["branches"]
    main_id = next(b["id"] for b in branch_id if b["default"])
    made = up.api.post(
        f"/v1/projects/{up.project_id}/endpoints",
        json={"endpoint": {"branch_id": main_id, "type": "read_only"}},
    )
    assert made.status_code in (200, 201), made.text
    read_only_id = made.json()["endpoint"]["id"]
    d.get(f"{up.url}/console/projects/{up.project_id}")
    assert "read-only" in _text(d, f"#endpoint-{read_only_id}")
    assert f"{main_id}-ro." in _text(d, f"#uri-read-pool-{main_id}")
    # Its page says where its replication stands, asked of its server once it runs.
    d.get(f"{up.url}/console/projects/{up.project_id}/endpoints/{read_only_id}")
    assert "suspended" in _text(d, "#replication")
    started = up.api.post(f"/v1/projects/{up.project_id}/endpoints/{read_only_id}/start")
    assert started.status_code < 300, started.text
    for _ in range(120):
        ep = up.api.get(f"/v1/projects/{up.project_id}/endpoints/{read_only_id}").json()
        if ep["endpoint"]["current_state"] in ("active", "failed"):
            break
        time.sleep(0.25)
    assert ep["endpoint"]["current_state"] == "active", ep
    # Caught up (the primary has not run yet: nothing to replay, replayed_lsn null). The
    # server says null until its replication threads have connected, moments after it is
    # active: asked again until it knows.
    for _ in range(40):
        if ep["endpoint"]["replication_lag_seconds"] is not None:
            break
        time.sleep(0.25)
        ep = up.api.get(f"/v1/projects/{up.project_id}/endpoints/{read_only_id}").json()
    assert ep["endpoint"]["replication_lag_seconds"] == 0, ep
    d.get(f"{up.url}/console/projects/{up.project_id}/endpoints/{read_only_id}")
    assert "replayed up to" in _text(d, "#replication")
    assert "0 s behind" in _text(d, "#replication").replace("0.0 s", "0 s")
    d.get(f"{up.url}/console/projects/{up.project_id}")

    # Suspend the demo endpoint: the state changes on the page without a reload.
    endpoint_id = up.user.split(".")[0]
    _click(d, f"#start-{endpoint_id}")
    _wait(d, lambda d: "active" in _text(d, f"#state-{endpoint_id}"), 60)
    # The button posts a form (the page comes back once); then the state goes on changing
    # in place. The flag is set on the page the post came back to, not on the one before.
    d.execute_script("window.beforePost = true")
    _click(d, f"#suspend-{endpoint_id}")
    _wait(
        d,
        lambda d: d.execute_script(
            "return !window.beforePost && document.readyState === 'complete'"
        ),
    )
    d.execute_script("window.notReloaded = true")
    _wait(d, lambda d: "suspended" in _text(d, f"#state-{endpoint_id}"), 60)
    assert d.execute_script("return window.notReloaded") is True

    # The SQL editor wakes it and shows rows.
    d.get(f"{up.url}/console/projects/{up.project_id}/sql")
    _type(d, "#password", up.password)
    _type(d, "#query", "SELECT 1 + 1 AS two, 'seal 🦭' AS animal")
    _click(d, "#run")
    _wait(d, lambda d: "seal" in d.page_source, 60)
    assert [c.text for c in d.find_elements("css selector", "#result th")] == ["two", "animal"]
    assert [c.text for c in d.find_elements("css selector", "#result td")] == ["2", "seal 🦭"]
    _shot(d, up, "sql")
    # A wrong password is the proxy's error, shown, and nothing else.
    _type(d, "#password", "wrong")
    _click(d, "#run")
    _wait(d, lambda d: "Access denied" in _text(d, "#sql-error"))

    # The endpoint page and the usage page render (wakes, chart, invoice).
    d.get(f"{up.url}/console/projects/{up.project_id}/endpoints/{endpoint_id}")
    assert "ms" in _text(d, "#wakes")
    # Its health, as the leader's checks last saw it (within a pass, 2 s, of the wake).
    _wait(
        d,
        lambda d: d.refresh() or _text(d, "#health").startswith("Health: healthy, checked"),
        15,
    )
    _shot(d, up, "endpoint")
    d.get(f"{up.url}/console/projects/{up.project_id}/usage")
    assert d.find_elements("css selector", "#usage-chart svg")
    assert _text(d, "#total")
    _shot(d, up, "usage")


def test_a_form_without_its_csrf_token_is_refused(browser, up: Up) -> None:  # type: ignore[no-untyped-def]
    d = browser
    _sign_in(d, up, up.key)
    _wait(d, lambda d: d.current_url.endswith("/console/projects"))
    status = d.execute_script(
        "return fetch('/console/projects', {method: 'POST', body: new URLSearchParams("
        "{name: 'forged'})}).then(r => r.status)"
    )
    assert status == 403
    names = [p["name"] for p in up.api.get("/v1/projects").json()["projects"]]
    assert "forged" not in names


def test_another_organizations_project_is_not_found(browser, up: Up) -> None:  # type: ignore[no-untyped-def]
    admin = run(up.env, "api-keys", "create", "--name", "operator", "--admin").stdout.strip()
    headers = {"Authorization": f"Bearer {admin}"}
    org = up.api.post(
        "/v1/organizations", json={"organization": {"name": "rival"}}, headers=headers
    )
    assert org.status_code == 201, org.text
    org_id = org.json()["organization"]["id"]
    key = up.api.post("/v1/api_keys", json={"key_name": "rival", "org_id": org_id}, headers=headers)
    assert key.status_code == 201, key.text
    d = browser
    d.delete_all_cookies()
    _sign_in(d, up, key.json()["key"])
    _wait(d, lambda d: d.current_url.endswith("/console/projects"))
    assert "demo" not in _text(d, "#projects")
    response = httpx.get(
        f"{up.url}/console/projects/{up.project_id}",
        cookies={c["name"]: c["value"] for c in d.get_cookies()},
    )
    assert response.status_code == 404
    d.get(f"{up.url}/console/projects/{up.project_id}")
    assert "not found" in _text(d, "#error").lower()
    # Signing out ends the session: the pages ask to sign in again.
    d.get(f"{up.url}/console/projects")
    _click(d, "#sign-out")
    _wait(d, lambda d: d.current_url.endswith("/console/sign-in"))
    d.get(f"{up.url}/console/projects")
    assert d.current_url.endswith("/console/sign-in")
