"""Notification preferences, digests, quiet hours, one-click unsubscribe and email templates.

End to end: the real server (`python app.py`), a real SMTP server (aiosmtpd), real HTTP. Digest windows and
quiet hours are driven by the workers' clock (NOTIFY_CLOCK_FILE: seconds added to the real time), so no test
waits for real minutes or hours.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests

from support import SECRET, LiveServer, SMTPServer, make_token, refused_start, settings_error, wait_for
from tasknotify.delivery import preferences
from tasknotify.delivery.preferences import Decision, UnsubscribeLinks, decide, quiet_until
from tasknotify.preference_document import EVENT_TYPES, Preferences

USER = "test@example.com"
OTHER = "other@example.com"


def document(digest_seconds: int = 0, events: tuple[str, ...] = EVENT_TYPES, enabled: bool = True,
             timezone: str = "UTC", quiet_hours: dict[str, str] | None = None) -> dict[str, Any]:
    return {"email": {"enabled": enabled, "events": list(events), "digest_seconds": digest_seconds},
            "timezone": timezone, "quiet_hours": quiet_hours}


class Clock:
    """The workers' clock of a live server: the real time plus the seconds written in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self.path.write_text(str(self.offset))

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)


@pytest.fixture
def clock(tmp_path: Path) -> Clock:
    return Clock(tmp_path / "clock")


@pytest.fixture
def server(start_server: Any, smtp: SMTPServer, clock: Clock) -> LiveServer:
    return start_server(NOTIFY_CLOCK_FILE=str(clock.path), **smtp.env)


def put_preferences(server: LiveServer, doc: dict[str, Any], user: str = USER,
                    token: str | None = None) -> requests.Response:
    response = requests.put(f"{server.url}/preferences", params={"user_email": user}, json=doc, timeout=10,
                            headers={"Authorization": f"Bearer {token or server.token}"})
    return response


def update(server: LiveServer, task_id: str, user: str = USER, **fields: str) -> int:
    response = server.post("/update_task", {"task_id": task_id, "user_email": user, **fields})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def emails(server: LiveServer, **params: Any) -> list[dict[str, Any]]:
    """Every email notification (oldest first), digests included."""
    rows, cursor = [], None
    while True:
        page = server.get("/notifications", params={"limit": 200, **params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        rows += [n for n in page.json()["notifications"] if n["channel"] == "email"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return rows


def held_rows(server: LiveServer, count: int, **params: Any) -> list[dict[str, Any]]:
    """Wait until count event emails (of params) are held; return them."""
    def ready() -> list[dict[str, Any]] | None:
        rows = [n for n in emails(server, **params) if n["kind"] == "event"]
        return rows if len(rows) == count and all(n["status"] == "held" for n in rows) else None

    return wait_for(ready, 20, f"{count} held emails")


def parts(message: Any) -> tuple[str, str]:
    return message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()


def messages_to(smtp: SMTPServer, user: str) -> list[Any]:
    return [m for m, rcpt in smtp.handler.received() if rcpt == [user]]


def settle(server: LiveServer, smtp: SMTPServer) -> None:
    """Let the workers go round once more: an email of another user, sent at once, arrives."""
    task_id = f"settle-{len(smtp.handler.messages)}"
    update(server, task_id, user="settle@example.com")
    wait_for(lambda: any(task_id in m["Subject"] for m in smtp.handler.messages), 20, "the settling email")


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- digests ------------------------------------------------------------------------------


def test_thirty_rapid_updates_with_a_60_s_digest_give_one_email_listing_the_task_once(server, smtp, clock):
    assert put_preferences(server, document(digest_seconds=60)).status_code == 200
    event_ids = [update(server, "d1", title=f"edit {n}") for n in range(30)]

    held = held_rows(server, 30, task_id="d1")
    [digest_id] = {n["digest_id"] for n in held}
    assert {n["reason"] for n in held} == {"digest"}
    window_end = iso(held[0]["created_at"]) + timedelta(seconds=60)
    assert {iso(n["next_attempt_at"]) for n in held} == {window_end}  # the window opened with the first event
    digest = server.get(f"/notifications/{digest_id}").json()
    assert (digest["kind"], digest["status"], digest["event_id"], digest["task_id"]) == ("digest", "pending",
                                                                                         None, None)
    assert digest["event_ids"] == event_ids and iso(digest["next_attempt_at"]) == window_end
    assert smtp.handler.count() == 0

    clock.advance(61)
    wait_for(lambda: smtp.handler.count() == 1, 20, "the digest")
    message = smtp.handler.messages[0]
    assert smtp.handler.recipients == [[USER]]
    assert message["Subject"] == "1 task changed (30 changes)"
    assert message["Message-ID"] == f"<notification-{digest_id}@notify.test>"
    text, html = parts(message)
    for part in (text, html):
        assert part.count("Task d1") + part.count("Task <b>d1</b>") == 1, part
        assert "edit 29" in part and "edit 28" not in part  # the task in its latest state
        assert "30 changes" in part and "events " + ", ".join(map(str, event_ids)) in part
    wait_for(lambda: server.get(f"/notifications/{digest_id}").json()["status"] == "sent", 10, "the digest sent")
    assert {(n["status"], n["digest_id"]) for n in emails(server, task_id="d1")} == {("digested", digest_id)}
    settle(server, smtp)
    assert len(messages_to(smtp, USER)) == 1


def test_updates_to_three_tasks_in_one_window_give_one_email_listing_three(server, smtp, clock):
    put_preferences(server, document(digest_seconds=300))
    for task_id, title in (("a", "Alpha"), ("b", "Beta"), ("c", "Gamma"), ("a", "Alpha again")):
        update(server, task_id, title=title)
    assert requests.delete(f"{server.url}/tasks/c", headers={"Authorization": f"Bearer {server.token}"},
                           timeout=10).status_code == 200
    held_rows(server, 5)
    clock.advance(301)
    wait_for(lambda: smtp.handler.count() == 1, 20, "the digest")
    message = smtp.handler.messages[0]
    assert message["Subject"] == "3 tasks changed (5 changes)"
    text, html = parts(message)
    for part in (text, html):
        assert "Alpha again" in part and "Beta" in part and "Gamma" in part
    assert "- Task a: Alpha again (open)\n  2 changes" in text
    assert "- Task c: Gamma (deleted)\n  2 changes" in text  # a deleted task shows as deleted
    assert "- Task b: Beta (open)\n  1 change," in text
    settle(server, smtp)
    assert len(messages_to(smtp, USER)) == 1


def test_a_task_moved_to_another_user_is_in_the_new_owners_digest_from_then_on(server, smtp, clock):
    for user in (USER, OTHER):
        put_preferences(server, document(digest_seconds=60), user=user)
    update(server, "m1", title="mine")
    update(server, "m1", user=OTHER, title="yours now")
    update(server, "m1", user=OTHER, title="yours, changed")
    held_rows(server, 3)
    clock.advance(61)
    wait_for(lambda: smtp.handler.count() == 2, 20, "two digests")
    [mine], [theirs] = messages_to(smtp, USER), messages_to(smtp, OTHER)
    assert mine["Subject"] == "Task m1 created: mine"  # one event: its own email
    assert "yours" not in parts(mine)[0]
    assert theirs["Subject"] == "1 task changed (2 changes)" and "yours, changed" in parts(theirs)[0]


def test_kill_9_while_a_window_is_open_still_gives_the_digest_with_every_held_event(start_server, smtp, clock):
    server = start_server(NOTIFY_CLOCK_FILE=str(clock.path), **smtp.env)
    put_preferences(server, document(digest_seconds=3600))
    event_ids = [update(server, f"k{n % 2}", title=f"before {n}") for n in range(5)]
    [digest_id] = {n["digest_id"] for n in held_rows(server, 5)}
    server.kill9()
    server.start()
    event_ids += [update(server, f"k{n % 2}", title=f"after {n}") for n in range(5)]
    assert {n["digest_id"] for n in held_rows(server, 10)} == {digest_id}  # the same window goes on
    assert smtp.handler.count() == 0
    clock.advance(3601)
    wait_for(lambda: smtp.handler.count() == 1, 20, "the digest")
    text, html = parts(smtp.handler.messages[0])
    for part in (text, html):
        assert "10 changes to 2 tasks" in part
        assert all(str(event_id) in part for event_id in event_ids)
    wait_for(lambda: server.get(f"/notifications/{digest_id}").json()["status"] == "sent", 10, "the digest sent")
    assert server.get(f"/notifications/{digest_id}").json()["event_ids"] == event_ids
    settle(server, smtp)
    assert len(messages_to(smtp, USER)) == 1


def test_a_digest_killed_in_flight_goes_again_with_the_same_message_id_and_events(start_server, smtp, clock):
    server = start_server(NOTIFY_CLOCK_FILE=str(clock.path), NOTIFY_LEASE_SECONDS="2", **smtp.env)
    put_preferences(server, document(digest_seconds=60))
    event_ids = [update(server, "f1", title=f"t{n}") for n in range(3)]
    held_rows(server, 3)
    smtp.handler.gate.clear()  # the mail server takes the digest and holds it
    clock.advance(61)
    wait_for(lambda: smtp.handler.data_started >= 1, 20, "the digest in flight")
    server.kill9()
    smtp.handler.gate.set()
    server.start()
    [digest] = wait_for(lambda: [n for n in emails(server) if n["kind"] == "digest" and n["status"] == "sent"], 30,
                        "the digest sent again after the lease")
    assert digest["attempts"] == 2 and digest["event_ids"] == event_ids
    assert smtp.handler.count() >= 1  # the killed attempt's message may or may not have been taken
    assert {m["Message-ID"] for m in smtp.handler.messages} == {f"<notification-{digest['id']}@notify.test>"}
    for message in smtp.handler.messages:
        assert "events " + ", ".join(map(str, event_ids)) in parts(message)[0]


# -- suppressed, quiet hours --------------------------------------------------------------


def test_a_disabled_event_type_gives_no_email_and_its_status_says_suppressed(server, smtp):
    put_preferences(server, document(events=("task.created", "task.deleted")))
    update(server, "s1")
    wait_for(lambda: smtp.handler.count() == 1, 10, "the creation's email")
    updated = update(server, "s1", title="changed")
    [row] = wait_for(lambda: [n for n in emails(server, task_id="s1") if n["event_id"] == updated
                              and n["status"] == "suppressed"], 10, "the update's email suppressed")
    assert row["reason"] == "email.events" and row["attempts"] == 0 and row["sent_at"] is None
    assert server.get(f"/notifications/{row['id']}").json()["status"] == "suppressed"
    assert [n["id"] for n in emails(server, status="suppressed")] == [row["id"]]
    settle(server, smtp)
    assert [m["Subject"] for m in messages_to(smtp, USER)] == ["Task s1 created"]


def test_email_off_suppresses_email_but_not_webhooks(start_server, smtp):
    from test_webhook import SECRET as WEBHOOK_SECRET
    from test_webhook import Receiver

    receiver = Receiver().start()
    try:
        server = start_server(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=WEBHOOK_SECRET, **smtp.env)
        put_preferences(server, document(enabled=False))
        update(server, "w1")
        wait_for(lambda: receiver.count() == 1, 10, "the webhook")
        [row] = wait_for(lambda: [n for n in emails(server) if n["status"] == "suppressed"], 10, "suppressed")
        assert row["reason"] == "email.enabled"
        assert smtp.handler.count() == 0
    finally:
        receiver.stop()


def next_local(zone: ZoneInfo, hour: int, minute: int, after: datetime) -> datetime:
    """The next hour:minute in zone after the moment after (aware)."""
    local = after.astimezone(zone)
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > local else (candidate + timedelta(days=1)).replace(hour=hour, minute=minute)


def test_quiet_hours_hold_email_and_release_it_as_one_digest(server, smtp, clock):
    tokyo = ZoneInfo("Asia/Tokyo")
    put_preferences(server, document(timezone="Asia/Tokyo", quiet_hours={"start": "22:00", "end": "07:00"}))
    put_preferences(server, document(timezone="Asia/Tokyo", quiet_hours={"start": "22:00", "end": "07:00"}),
                    user=OTHER)
    # The workers' clock to 23:30 in Tokyo: inside the quiet hours.
    evening = next_local(tokyo, 23, 30, clock.now())
    clock.advance((evening - clock.now()).total_seconds())
    event_ids = [update(server, "q1", title="late"), update(server, "q2", title="later"),
                 update(server, "q1", title="latest")]
    alone = update(server, "q3", user=OTHER, title="only one")
    held = held_rows(server, 4)
    morning = next_local(tokyo, 7, 0, evening)
    assert {(n["reason"], iso(n["next_attempt_at"])) for n in held} == {("quiet_hours", morning)}
    settle(server, smtp)
    assert messages_to(smtp, USER) == [] and messages_to(smtp, OTHER) == []

    clock.advance((morning - clock.now()).total_seconds() + 30)
    wait_for(lambda: len(messages_to(smtp, USER)) == 1 and len(messages_to(smtp, OTHER)) == 1, 20,
             "the morning's emails")
    [digest] = messages_to(smtp, USER)
    assert digest["Subject"] == "2 tasks changed (3 changes)"
    assert "events " + ", ".join(map(str, (event_ids[0], event_ids[2]))) in parts(digest)[0]
    [single] = messages_to(smtp, OTHER)  # only one was waiting: it goes out as itself
    assert single["Subject"] == "Task q3 created: only one" and single["X-Task-Event-Id"] == str(alone)


# -- one-click unsubscribe -----------------------------------------------------------------


def enabled(server: LiveServer, user: str) -> bool:
    return server.get("/preferences", params={"user_email": user}).json()["email"]["enabled"]


def test_one_click_unsubscribe_with_a_real_post_as_a_mail_provider_sends_it(server, smtp):
    update(server, "u1")
    update(server, "u2", user=OTHER)
    wait_for(lambda: smtp.handler.count() == 2, 10, "two emails")
    [message] = messages_to(smtp, USER)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = message["List-Unsubscribe"].strip()
    assert header.startswith("<") and header.endswith(">")
    link = header[1:-1]
    assert link.startswith(f"{server.url}/unsubscribe?t=")  # PUBLIC_URL unset: made of HOST and PORT
    text, html = parts(message)
    assert link in text and link.replace("&", "&amp;") in html and "PUT" in text and "/preferences" in text
    assert "links in emails start with" in server.log() and "PUBLIC_URL" in server.log()

    # Tampered tokens change nothing: a changed signature, another user's address under this signature.
    token = parse_qs(urlsplit(link).query)["t"][0]
    other_token = parse_qs(urlsplit(messages_to(smtp, OTHER)[0]["List-Unsubscribe"].strip()[1:-1]).query)["t"][0]
    payload, signature = token.split(".")
    for bad in (f"{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
                f"{other_token.split('.')[0]}.{signature}", payload, "", "not-a-token"):
        refused = requests.post(f"{server.url}/unsubscribe", params={"t": bad},
                                data={"List-Unsubscribe": "One-Click"}, timeout=10)
        assert refused.status_code == 400, refused.text
        assert refused.headers["Content-Type"] == "application/json"
        assert refused.json()["error"]["code"] == "invalid_token"
    assert enabled(server, USER) and enabled(server, OTHER)

    # As RFC 8058 says a mail provider sends it: a POST to the link, the form body, no other credential.
    answer = requests.post(link, data="List-Unsubscribe=One-Click", timeout=10,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "unsubscribed" and answer.json()["user_email"] == USER
    assert not enabled(server, USER) and enabled(server, OTHER)
    again = requests.post(link, files={"List-Unsubscribe": (None, "One-Click")}, timeout=10)  # multipart
    assert again.status_code == 200 and not again.json()["preferences"]["email"]["enabled"]
    assert requests.post(link, data={"List-Unsubscribe": "Other"}, timeout=10).status_code == 422

    later = update(server, "u1", title="after unsubscribing")
    [row] = wait_for(lambda: [n for n in emails(server) if n["event_id"] == later and n["status"] == "suppressed"],
                     10, "the next email suppressed")
    assert row["reason"] == "email.enabled"
    settle(server, smtp)
    assert len(messages_to(smtp, USER)) == 1


def test_get_unsubscribe_shows_a_page_and_changes_nothing(server, smtp):
    update(server, "g1")
    wait_for(lambda: smtp.handler.count() == 1, 10, "the email")
    link = smtp.handler.messages[0]["List-Unsubscribe"].strip()[1:-1]
    for _ in range(3):  # a mail scanner opening the link, again and again
        page = requests.get(link, timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    live_policy = requests.get(f"{server.url}/", timeout=10).headers["Content-Security-Policy"]
    hashes = re.compile(r"(script|style)-src [^;]+")
    assert hashes.sub(r"\1-src", policy) == hashes.sub(r"\1-src", live_policy)  # the live page's policy
    assert "script-src 'none'" in policy and "style-src 'sha256-" in policy  # its own style, no script
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    path = urlsplit(link).path + "?" + urlsplit(link).query
    assert f'<form method="post" action="{path}">' in page.text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page.text
    assert enabled(server, USER)
    update(server, "g1", title="still mailed")
    wait_for(lambda: smtp.handler.count() == 2, 10, "the next email")
    assert requests.get(f"{server.url}/unsubscribe", params={"t": "forged.token"}, timeout=10).status_code == 400


# -- templates -----------------------------------------------------------------------------


def test_a_template_override_is_used_and_headers_stay_safe(start_server, smtp, tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "event.subject.txt").write_text("[Custom] {{ event.task_id }} {{ verb }}\nBcc: victim@example.com\n")
    (folder / "event.html").write_text('<p class="custom">{{ task.title }} for {{ recipient }}</p>'
                                       '<a href="{{ unsubscribe_url }}">stop</a>\n')
    server = start_server(EMAIL_TEMPLATES_DIR=str(folder), **smtp.env)
    update(server, "o1", title="<script>alert(1)</script>")
    wait_for(lambda: smtp.handler.count() == 1, 10, "the email")
    message = smtp.handler.messages[0]
    assert message["Subject"] == "[Custom] o1 created Bcc: victim@example.com"
    assert message["Bcc"] is None and smtp.handler.recipients == [[USER]]
    text, html = parts(message)
    assert '<p class="custom">&lt;script&gt;alert(1)&lt;/script&gt; for test@example.com</p>' in html
    assert text.startswith("Task o1 was created.")  # the package's, where the folder has none


@pytest.mark.parametrize(("name", "source", "says"), [
    ("digest.html", "<p>{% for item in tasks %}{{ item.task_id }}</p>", "digest.html, line 1"),
    ("event.txt", "Hello {{ no_such_variable }}", "event.txt does not render: 'no_such_variable' is undefined"),
])
def test_a_broken_template_is_refused_with_its_name_and_line(tmp_path, name, source, says):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / name).write_text(source)
    error = settings_error(EMAIL_TEMPLATES_DIR=str(folder))
    assert error.startswith(f"invalid value for EMAIL_TEMPLATES_DIR: '{folder}' ") and says in error


def test_a_broken_template_stops_the_start_with_one_line(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "event.txt").write_text("Hello {{ no_such_variable }}")
    line = refused_start(tmp_path, EMAIL_TEMPLATES_DIR=str(folder), SMTP_HOST="127.0.0.1")
    assert line.startswith(f"configuration: invalid value for EMAIL_TEMPLATES_DIR: '{folder}' ")
    assert "event.txt does not render: 'no_such_variable' is undefined" in line


# -- the preferences API --------------------------------------------------------------------


def test_preferences_are_read_and_replaced_whole_with_clear_errors(make_app):
    app = make_app(AUTH_DISABLED=False, DEFAULT_DIGEST_SECONDS=3600, DEFAULT_TIMEZONE="Europe/Paris")
    client = app.test_client()
    mine = {"Authorization": f"Bearer {make_token(USER, ('updates:read',))}"}  # any valid token of the user
    admin = {"Authorization": f"Bearer {make_token()}"}
    defaults = document(digest_seconds=3600, timezone="Europe/Paris")
    assert client.get("/preferences", headers=mine).get_json() == defaults
    assert client.get("/preferences").status_code == 401

    wanted = document(events=("task.deleted",), quiet_hours={"start": "22:00", "end": "07:00"})
    assert client.put("/preferences", headers=mine, json=wanted).get_json() == wanted
    assert client.get("/preferences", headers=mine).get_json() == wanted
    assert client.get(f"/preferences?user_email={USER.upper()}", headers=mine).get_json() == wanted
    assert client.get(f"/preferences?user_email={OTHER}", headers=mine).status_code == 403
    assert client.put(f"/preferences?user_email={OTHER}", headers=mine, json=wanted).status_code == 403
    assert client.get(f"/preferences?user_email={OTHER}", headers=admin).get_json() == defaults
    assert client.put(f"/preferences?user_email={OTHER}", headers=admin, json=wanted).status_code == 200

    for bad, field in [
        ({**wanted, "timezone": "Mars/Olympus"}, "timezone"),
        ({**wanted, "email": {**wanted["email"], "digest_seconds": 59}}, "email.digest_seconds"),
        ({**wanted, "email": {**wanted["email"], "digest_seconds": 604801}}, "email.digest_seconds"),
        ({**wanted, "email": {**wanted["email"], "enabled": "yes"}}, "email.enabled"),
        ({**wanted, "email": {**wanted["email"], "events": ["task.renamed"]}}, "email.events.0"),
        ({**wanted, "email": {**wanted["email"], "events": ["task.created", "task.created"]}}, "email.events"),
        ({**wanted, "quiet_hours": {"start": "24:00", "end": "07:00"}}, "quiet_hours.start"),
        ({**wanted, "quiet_hours": {"start": "07:00", "end": "07:00"}}, "quiet_hours"),
        ({key: value for key, value in wanted.items() if key != "timezone"}, "timezone"),
        ({**wanted, "sms": True}, "sms"),
    ]:
        refused = client.put("/preferences", headers=mine, json=bad)
        assert refused.status_code == 422, (bad, refused.get_json())
        assert field in [d["field"] for d in refused.get_json()["error"]["details"]], (field, refused.get_json())
    assert client.put("/preferences", headers=mine, data="{", content_type="application/json").status_code == 400
    assert client.put("/preferences", headers=mine, data="x").status_code == 415
    assert client.get("/preferences", headers=mine).get_json() == wanted  # nothing refused was kept


def test_with_auth_off_preferences_need_a_user_email(make_app):
    client = make_app().test_client()
    refused = client.get("/preferences")
    assert refused.status_code == 422 and refused.get_json()["error"]["details"][0]["field"] == "user_email"
    assert client.get(f"/preferences?user_email={USER}").get_json() == document()


@pytest.mark.parametrize(("name", "value"), [("DEFAULT_DIGEST_SECONDS", "30"), ("DEFAULT_TIMEZONE", "Nowhere/X"),
                                             ("DEFAULT_QUIET_HOURS", "22-7"), ("DEFAULT_EMAIL_EVENTS", "task.x"),
                                             ("PUBLIC_URL", "ftp://example.com"),
                                             ("EMAIL_TEMPLATES_DIR", "/no/such/folder")])
def test_a_bad_preference_setting_is_refused_by_name_and_value(name, value):
    assert settings_error(**{name: value}).startswith(f"invalid value for {name}: {value!r}")


def test_a_bad_preference_setting_stops_the_start(tmp_path):
    assert refused_start(tmp_path, DEFAULT_TIMEZONE="Nowhere/X").startswith(
        "configuration: invalid value for DEFAULT_TIMEZONE: 'Nowhere/X'")


# -- the decision, unit by unit ---------------------------------------------------------------


def prefs(**kwargs: Any) -> Preferences:
    return Preferences.model_validate(document(**kwargs))


T0 = datetime(2026, 3, 28, 12, 0, 0)  # UTC, naive as stored


def test_decide_sends_suppresses_or_holds() -> None:
    assert decide(prefs(), "task.updated", T0, T0) == preferences.SEND
    assert decide(prefs(enabled=False), "task.updated", T0, T0) == Decision("suppress", "email.enabled")
    assert decide(prefs(events=("task.created",)), "task.updated", T0, T0) == Decision("suppress", "email.events")
    # The window opens with the event, however late a worker gets to it.
    late = T0 + timedelta(seconds=30)
    assert decide(prefs(digest_seconds=60), "task.updated", T0, late) == Decision(
        "hold", "digest", T0 + timedelta(seconds=60))


def test_quiet_hours_in_the_users_time_zone_across_midnight_and_daylight_saving() -> None:
    paris = prefs(timezone="Europe/Paris", quiet_hours={"start": "22:00", "end": "07:00"})
    # 2026-03-28 22:30 in Paris is 21:30 UTC (CET); the night's end, 07:00 on the 29th, is CEST: 05:00 UTC.
    assert quiet_until(paris, datetime(2026, 3, 28, 21, 30)) == datetime(2026, 3, 29, 5, 0)
    assert quiet_until(paris, datetime(2026, 3, 29, 4, 59)) == datetime(2026, 3, 29, 5, 0)
    assert quiet_until(paris, datetime(2026, 3, 29, 5, 0)) is None
    assert quiet_until(paris, datetime(2026, 3, 28, 20, 59)) is None
    day = prefs(timezone="America/New_York", quiet_hours={"start": "09:00", "end": "17:30"})
    assert quiet_until(day, datetime(2026, 7, 1, 13, 0)) == datetime(2026, 7, 1, 21, 30)  # 09:00 EDT
    assert quiet_until(day, datetime(2026, 7, 1, 12, 59)) is None
    # A digest whose window closes in quiet hours waits for their end.
    evening = datetime(2026, 3, 28, 20, 50)
    assert decide(paris.model_copy(update={"email": paris.email.model_copy(update={"digest_seconds": 3600})}),
                  "task.updated", evening, evening) == Decision("hold", "quiet_hours", datetime(2026, 3, 29, 5, 0))


def test_unsubscribe_tokens_are_bound_to_their_address_and_key() -> None:
    links = UnsubscribeLinks(SECRET, "https://tasks.example.com")
    token = links.token(USER)
    assert links.email_of(token) == USER
    assert links.url(USER) == f"https://tasks.example.com/unsubscribe?t={token}"
    for bad in (UnsubscribeLinks("another key", "x").token(USER), token[:-1], token.replace(".", "x.", 1)):
        with pytest.raises(preferences.InvalidToken):
            links.email_of(bad)
