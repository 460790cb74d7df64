"""Browser tests: the Angular example app and the live page at / in headless Chromium, against the real server.

The API server is `python app.py` in a subprocess (auth on, its own SQLite
database); the built Angular app is served from its own origin by a small
static server, which the API's CORS_ORIGINS allows. Each test saves a
screenshot under test-artifacts/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from browser_support import (
    ANGULAR_DIST,
    CHROMIUM,
    CHROMIUM_FLAGS,
    ApiServer,
    StaticServer,
    make_token,
    require_angular_build,
    require_chromium,
    saved_since,
    screenshot,
    skip_or_fail,
)
from support import wait_for

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (bin/setup dev)")
expect = sync_api.expect

TRANSPORTS = ["socketio", "sse"]
# serial: one Chromium for the module, and a live update must show within 2 s
pytestmark = [pytest.mark.timeout(120), pytest.mark.serial]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site() -> Iterator[StaticServer]:
    """The Angular app's own origin (http://127.0.0.1:<port>), which the API server allows."""
    with StaticServer(ANGULAR_DIST) as site:
        yield site


@pytest.fixture
def app_site(site: StaticServer) -> StaticServer:
    """The origin, serving the built Angular app."""
    require_angular_build()
    return site


@pytest.fixture
def api(tmp_path: Path, database_url: str, site: StaticServer) -> Iterator[ApiServer]:
    """`python app.py` on this test's own database (conftest's database_url: SQLite, or PostgreSQL)."""
    server = ApiServer(tmp_path / "instance", cors_origins=[site.origin], database_url=database_url).start()
    yield server
    server.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context; the page's console shows in a failed test's output, with a screenshot."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("console", lambda message: print(f"console {message.type}: {message.text}"))
    page.on("pageerror", lambda exc: print(f"page error: {exc}"))
    started = time.time()
    yield page
    if not saved_since(started):  # the test did not get to its own screenshot: keep what the page showed
        screenshot(page, "failed-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name))
    context.close()


def app_url(site: StaticServer, api: ApiServer, token: str, transport: str) -> str:
    return f"{site.origin}/?" + urlencode({"api": api.url, "token": token, "transport": transport})


def event_item(page: Any, event_id: int) -> Any:
    return page.locator(f'[data-testid="events"] li[data-event-id="{event_id}"]')


def shown_event_ids(page: Any) -> list[int]:
    return [int(i) for i in page.locator('[data-testid="events"] li[data-event-id]').evaluate_all(
        "items => items.map(item => item.dataset.eventId)")]


# -- the Angular app ---------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_angular_app_shows_a_posted_update_within_two_seconds(transport: str, app_site: StaticServer,
                                                              api: ApiServer, page: Any) -> None:
    token = make_token()
    page.goto(app_url(app_site, api, token, transport))
    expect(page.get_by_test_id("transport")).to_have_text(transport)
    expect(page.get_by_test_id("state")).to_have_text("open")

    answer = api.post_update(token, task_id=f"b-{transport}", title=f"Posted, seen over {transport}",
                             status="in_progress")
    posted = time.monotonic()
    row = page.locator(f'[data-testid="tasks"] tr[data-task-id="b-{transport}"]')
    expect(row.locator(".title")).to_have_text(f"Posted, seen over {transport}", timeout=2_000)
    expect(row.locator(".status")).to_have_text("in_progress", timeout=2_000)
    expect(event_item(page, answer["event_id"])).to_have_count(1, timeout=2_000)
    assert time.monotonic() - posted < 2.0

    # The app's own form posts across origins (CORS preflight with the token) and sees its update live.
    page.get_by_role("button", name="edit").first.click()
    page.locator('[data-testid="update-form"] select[name="status"]').select_option("done")
    page.locator('[data-testid="update-form"] button[type="submit"]').click()
    expect(page.get_by_test_id("form-message")).to_contain_text(f"Task b-{transport} saved")
    expect(row.locator(".status")).to_have_text("done", timeout=2_000)
    assert shown_event_ids(page) == [answer["event_id"] + 1, answer["event_id"]]
    screenshot(page, f"angular-live-{transport}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_angular_app_reconnects_after_a_restart_and_shows_what_it_missed_once(
        transport: str, app_site: StaticServer, api: ApiServer, page: Any) -> None:
    token = make_token()
    page.goto(app_url(app_site, api, token, transport))
    state = page.get_by_test_id("state")
    expect(state).to_have_text("open")
    first = api.post_update(token, task_id="r-1", title="before the restart")
    expect(event_item(page, first["event_id"])).to_have_count(1, timeout=2_000)

    api.stop()
    expect(state).to_have_text("reconnecting")
    # While the app's server is down, another process on the same database takes the writes.
    other = ApiServer(api.instance_path, cors_origins=api.cors_origins, database_url=api.database_url).start()
    try:
        missed = [other.post_update(token, task_id="r-1", title="while it was down"),
                  other.post_update(token, task_id="r-2", title="also while it was down")]
    finally:
        other.stop()
    api.start()  # the same port and database

    expect(state).to_have_text("open", timeout=30_000)
    for answer in missed:
        expect(event_item(page, answer["event_id"])).to_have_count(1)
    last = api.post_update(token, task_id="r-1", title="after the restart")
    expect(event_item(page, last["event_id"])).to_have_count(1, timeout=2_000)
    expected = [last["event_id"], missed[1]["event_id"], missed[0]["event_id"], first["event_id"]]
    assert shown_event_ids(page) == expected  # newest first, each once
    expect(page.locator('[data-testid="tasks"] tr[data-task-id="r-2"] .title')).to_have_text(
        "also while it was down")
    expect(page.locator('[data-testid="tasks"] tr[data-task-id="r-1"] .title')).to_have_text("after the restart")
    screenshot(page, f"angular-restart-{transport}")


def test_angular_app_switches_transport_without_losing_or_repeating_events(
        app_site: StaticServer, api: ApiServer, page: Any) -> None:
    token = make_token()
    page.goto(app_url(app_site, api, token, "socketio"))
    state = page.get_by_test_id("state")
    expect(state).to_have_text("open")
    first = api.post_update(token, task_id="s-1", title="over Socket.IO")
    expect(event_item(page, first["event_id"])).to_have_count(1, timeout=2_000)

    page.get_by_test_id("use-sse").check()
    expect(page.get_by_test_id("transport")).to_have_text("sse")
    expect(state).to_have_text("open")
    second = api.post_update(token, task_id="s-1", title="over SSE")
    expect(event_item(page, second["event_id"])).to_have_count(1, timeout=2_000)

    page.get_by_test_id("use-socketio").check()
    expect(page.get_by_test_id("transport")).to_have_text("socketio")
    expect(state).to_have_text("open")
    third = api.post_update(token, task_id="s-1", title="over Socket.IO again")
    expect(event_item(page, third["event_id"])).to_have_count(1, timeout=2_000)
    assert shown_event_ids(page) == [third["event_id"], second["event_id"], first["event_id"]]
    screenshot(page, "angular-transport-switch")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_origin_gets_nothing(transport: str, app_site: StaticServer, api: ApiServer, page: Any) -> None:
    """The same app served from an origin that CORS_ORIGINS does not list: no connection, no event."""
    token = make_token()
    stream_path = "/socket.io/" if transport == "socketio" else "/task_updates"
    with StaticServer(require_angular_build()) as stranger:
        assert stranger.origin not in api.cors_origins
        # The browser blocks the answer (engine.io refuses the handshake with 400 and no CORS headers).
        with page.expect_event("requestfailed", lambda r: stream_path in r.url):
            page.goto(app_url(stranger, api, token, transport))
        expect(page.get_by_test_id("list-error")).to_contain_text("refuses this origin")
        expect(page.get_by_test_id("problem")).to_be_visible()

        answer = api.post_update(token, task_id="refused-1", title="must not be seen")
        # Wait for the app to try again after the update exists: an allowed origin would now receive it.
        with page.expect_event("requestfailed", lambda r: stream_path in r.url, timeout=30_000):
            pass
        expect(page.get_by_test_id("state")).not_to_have_text("open")
        expect(event_item(page, answer["event_id"])).to_have_count(0)
        assert shown_event_ids(page) == []
        expect(page.locator('[data-testid="tasks"] tr[data-task-id]')).to_have_count(0)
        if transport == "socketio":
            assert requests.get(f"{api.url}/healthz", timeout=5).json()["streams"]["socketio"] == 0
        screenshot(page, f"refused-origin-{transport}")


def held_emails(api: ApiServer, token: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        rows = requests.get(f"{api.url}/notifications", params={"status": "held", "limit": 200}, timeout=10,
                            headers={"Authorization": f"Bearer {token}"}).json()["notifications"]
        return rows if len(rows) == count else None

    return wait_for(ready, 20, f"{count} held emails")


def test_angular_preferences_view_changes_what_is_mailed(app_site: StaticServer, site: StaticServer, page: Any,
                                                         tmp_path: Path, database_url: str, smtp: Any) -> None:
    """Turn off an event type: its change sends no email. Choose a digest: a burst is one email."""
    clock = tmp_path / "clock"
    api = ApiServer(tmp_path / "instance", cors_origins=[site.origin], database_url=database_url,
                    env={**smtp.env, "NOTIFY_CLOCK_FILE": str(clock), "NOTIFY_POLL_SECONDS": "0.2"}).start()
    try:
        token = make_token()
        page.goto(app_url(app_site, api, token, "socketio"))
        view = page.get_by_test_id("preferences")
        expect(view.get_by_test_id("prefs-message")).to_have_text("Preferences loaded.")
        expect(view.get_by_test_id("prefs-digest")).to_have_value("0")
        view.get_by_test_id("prefs-task.updated").uncheck()
        view.get_by_test_id("prefs-save").click()
        expect(view.get_by_test_id("prefs-message")).to_have_text("Preferences saved.")

        api.post_update(token, task_id="p-1", title="created")
        wait_for(lambda: smtp.handler.count() == 1, 10, "the creation's email")
        updated = api.post_update(token, task_id="p-1", title="changed")["event_id"]
        headers = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: [n for n in requests.get(f"{api.url}/notifications", params={"status": "suppressed"},
                                                  headers=headers, timeout=10).json()["notifications"]
                          if n["event_id"] == updated], 10, "the update's email suppressed")

        view.get_by_test_id("prefs-task.updated").check()
        view.get_by_test_id("prefs-digest").select_option(label="every 5 minutes")
        view.get_by_test_id("prefs-save").click()
        expect(view.get_by_test_id("prefs-message")).to_have_text("Preferences saved.")
        page.reload()  # what was saved is what the server gives back
        expect(view.get_by_test_id("prefs-digest")).to_have_value("300")
        expect(view.get_by_test_id("prefs-task.updated")).to_be_checked()

        for n in range(5):
            api.post_update(token, task_id="p-2", title=f"burst {n}")
        held_emails(api, token, 5)
        assert smtp.handler.count() == 1
        clock.write_text("301")  # the workers' clock: the window has closed
        wait_for(lambda: smtp.handler.count() == 2, 20, "the digest")
        digest = smtp.handler.messages[1]
        assert digest["Subject"] == "1 task changed (5 changes)"
        assert "burst 4" in digest.get_body(("plain",)).get_content()
        screenshot(page, "angular-preferences")
    finally:
        api.stop()


# -- the live page at / ----------------------------------------------------------------


def test_live_page_shows_a_posted_update(api: ApiServer, page: Any) -> None:
    if requests.get(f"{api.url}/", timeout=5).status_code == 404:
        skip_or_fail("GET / answers 404: app.py does not register pages.bp yet (app.register_blueprint(pages.bp))")
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.goto(f"{api.url}/")
    # Auth is on and the page has no token yet: the stream answers 401 and the page asks for one.
    expect(page.locator("#token-panel")).to_be_visible()
    expect(page.locator("#state")).to_have_text("unauthorized")
    token = make_token()
    page.locator("#token").fill(token)
    page.locator("#token-form button[type=submit]").click()
    expect(page.locator("#state")).to_have_text("open")
    assert page.evaluate("localStorage.getItem('tasks.token')") == token

    answer = api.post_update(token, task_id="live-1", title="Posted with curl")
    expect(page.locator(f'#events li[data-event-id="{answer["event_id"]}"]')).to_contain_text(
        "Posted with curl", timeout=2_000)

    form = page.locator("#update-form")
    form.locator("input[name=task_id]").fill("live-2")
    form.locator("input[name=title]").fill("Posted from the page")
    form.locator("select[name=status]").select_option("in_progress")
    form.locator("button[type=submit]").click()
    newest = page.locator("#events li").first
    expect(newest).to_contain_text("Posted from the page", timeout=2_000)
    expect(newest).to_have_attribute("data-event-id", str(answer["event_id"] + 1))
    expect(page.locator("#events li")).to_have_count(2)
    assert not [m for m in messages if "Content Security Policy" in m], messages
    screenshot(page, "live-page")


def test_live_page_preferences_panel_reads_and_writes_preferences(api: ApiServer, page: Any) -> None:
    token = make_token()
    page.goto(f"{api.url}/")
    page.evaluate(f"localStorage.setItem('tasks.token', {token!r})")
    page.reload()
    panel = page.locator("#prefs-panel")
    expect(panel.locator("#prefs-message")).to_have_text("Preferences loaded.")
    expect(panel.locator("select[name=digest_seconds]")).to_have_value("0")
    panel.locator("input[value='task.deleted']").uncheck()
    panel.locator("select[name=digest_seconds]").select_option(label="hourly")
    panel.locator("input[name=timezone]").fill("Europe/Paris")
    panel.locator("input[name=quiet]").check()
    panel.locator("button[type=submit]").click()
    expect(panel.locator("#prefs-message")).to_have_text("Preferences saved.")
    stored = requests.get(f"{api.url}/preferences", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert stored == {"email": {"enabled": True, "events": ["task.created", "task.updated"], "digest_seconds": 3600},
                      "timezone": "Europe/Paris", "quiet_hours": {"start": "22:00", "end": "07:00"}}
    panel.locator("input[name=timezone]").fill("Mars/Olympus")
    panel.locator("button[type=submit]").click()
    expect(panel.locator("#prefs-message")).to_contain_text("timezone")
    expect(panel.locator("#prefs-message")).to_have_class("error")
    screenshot(page, "live-page-preferences")


def test_the_unsubscribe_page_works_under_its_policy(api: ApiServer, page: Any) -> None:
    """The page of an email's unsubscribe link: no CSP violation; its button unsubscribes."""
    from itsdangerous import URLSafeSerializer

    from browser_support import SECRET, USER

    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    token = URLSafeSerializer(SECRET, salt="unsubscribe").dumps(USER)  # as the service signs its links
    page.goto(f"{api.url}/unsubscribe?t={token}")
    expect(page.locator("#title")).to_have_text("Stop task emails?")
    headers = {"Authorization": f"Bearer {make_token()}"}
    assert requests.get(f"{api.url}/preferences", headers=headers, timeout=10).json()["email"]["enabled"]
    page.locator("#unsubscribe").click()
    expect(page.locator("#title")).to_have_text("Email is off")
    assert not requests.get(f"{api.url}/preferences", headers=headers, timeout=10).json()["email"]["enabled"]
    assert not [m for m in messages if "Content Security Policy" in m], messages
    screenshot(page, "unsubscribe-page")
