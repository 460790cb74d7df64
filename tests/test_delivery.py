"""Email notifications end to end: the real server, a real SMTP server (aiosmtpd), slow, failing, killed."""

from __future__ import annotations

import signal
import statistics
import time

from support import wait_for

ORIGINAL = {"task_id": "123", "user_email": "test@example.com"}


def notifications(server, **params) -> list[dict]:
    return server.get("/notifications", params={"limit": 200, **params}).json()["notifications"]


def test_original_request_sends_an_email_to_its_address(live_server, smtp):
    response = live_server.post("/update_task", ORIGINAL)
    assert response.status_code == 200
    assert response.json()["status"] == "task updated, notification will be sent asynchronously"
    wait_for(lambda: smtp.handler.count() == 1, 10, "the email")
    message = smtp.handler.messages[0]
    assert smtp.handler.recipients[0] == ["test@example.com"]
    assert message["To"] == "test@example.com"
    assert message["From"] == "tasks@notify.test"
    assert "123" in message["Subject"]
    assert message["Message-ID"].startswith("<notification-")
    assert {part.get_content_type() for part in message.walk()} >= {"text/plain", "text/html"}
    wait_for(lambda: notifications(live_server)[0]["status"] == "sent")
    note = notifications(live_server)[0]
    assert note["attempts"] == 1 and note["sent_at"] and note["channel"] == "email"


def test_update_answers_without_waiting_for_the_mail_server(live_server, smtp):
    """While the SMTP server holds every message, 20 updates are all answered; then all 20 emails arrive."""
    smtp.handler.gate.clear()
    latencies = []
    for n in range(20):
        started = time.perf_counter()
        response = live_server.post("/update_task", {**ORIGINAL, "task_id": f"slow-{n}"})
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200
    assert smtp.handler.count() == 0  # every answer came before any email was accepted
    smtp.handler.gate.set()
    wait_for(lambda: smtp.handler.count() == 20, 30, "20 emails")
    assert sorted(m["To"] for m in smtp.handler.messages) == ["test@example.com"] * 20
    print(f"/update_task with a held SMTP server: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"slowest {max(latencies) * 1000:.1f} ms")


def test_a_two_second_mail_server_delays_no_answer_and_loses_no_email(live_server, smtp):
    smtp.handler.delay = 2.0
    latencies = []
    for n in range(20):
        started = time.perf_counter()
        assert live_server.post("/update_task", {**ORIGINAL, "task_id": f"t{n}"}).status_code == 200
        latencies.append(time.perf_counter() - started)
    wait_for(lambda: smtp.handler.count() == 20, 60, "20 slow emails")
    print(f"/update_task with a 2 s SMTP server: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"slowest {max(latencies) * 1000:.1f} ms")


def test_temporary_smtp_failures_end_in_delivery(live_server, smtp):
    smtp.handler.temporary_failures = 3
    live_server.post("/update_task", ORIGINAL)
    wait_for(lambda: smtp.handler.count() == 1, 20, "the email after 451s")
    wait_for(lambda: notifications(live_server)[0]["status"] == "sent")
    assert notifications(live_server)[0]["attempts"] == 4


def test_mail_server_down_then_up(start_server, smtp):
    smtp.stop()  # nothing listens on its port
    server = start_server(**smtp.env)
    server.post("/update_task", ORIGINAL)
    wait_for(lambda: notifications(server)[0]["status"] == "retrying", 10)
    note = notifications(server)[0]
    assert "SMTP connection failed" in note["last_error"]
    server.stop()


def test_dead_notification_is_retried_on_request(start_server, smtp):
    smtp.stop()
    server = start_server(NOTIFY_MAX_ATTEMPTS="2", **smtp.env)
    server.post("/update_task", ORIGINAL)
    wait_for(lambda: notifications(server)[0]["status"] == "dead", 15)
    note = notifications(server)[0]
    assert note["attempts"] == 2
    smtp.start()
    response = server.post(f"/notifications/{note['id']}/retry", None)
    assert response.status_code == 202 and response.json()["status"] == "pending"
    wait_for(lambda: smtp.handler.count() == 1, 10)
    wait_for(lambda: notifications(server)[0]["status"] == "sent")


def test_nothing_pending_at_kill_9_is_lost(start_server, smtp):
    """Notifications pending (and in flight) when the server is killed -9 are all delivered after a restart."""
    smtp.handler.gate.clear()  # the mail server accepts connections but holds every message
    server = start_server(NOTIFY_LEASE_SECONDS="2", **smtp.env)
    for n in range(30):
        assert server.post("/update_task", {**ORIGINAL, "task_id": f"k{n}"}).status_code == 200
    wait_for(lambda: smtp.handler.data_started >= 1, 10, "a delivery in flight")
    server.kill9()
    assert smtp.handler.count() == 0
    smtp.handler.gate.set()
    server.start()
    wait_for(lambda: len({m["Message-ID"] for m in smtp.handler.messages}) == 30, 60, "all 30 emails")
    wait_for(lambda: {n["status"] for n in notifications(server)} == {"sent"}, 20)
    subjects = {m["Subject"] for m in smtp.handler.messages}
    assert subjects == {f"Task k{n} created" for n in range(30)}
    print(f"kill -9 with 30 pending: {len({m['Message-ID'] for m in smtp.handler.messages})} of 30 delivered "
          f"after restart ({smtp.handler.count()} messages, duplicates share a Message-ID)")


def test_sigterm_stops_gracefully(start_server, smtp):
    smtp.handler.delay = 1.0
    server = start_server(**smtp.env)
    server.post("/update_task", ORIGINAL)
    wait_for(lambda: smtp.handler.data_started == 1, 10, "a delivery in flight")
    assert server.stop(signal.SIGTERM) == 0
    assert smtp.handler.count() == 1  # the in-flight delivery finished before the exit
    assert "stopped" in server.log()


def test_header_injection_through_the_title_is_neutralised(live_server, smtp):
    title = "Hello\r\nBcc: victim@example.com\r\n\r\nInjected body"
    live_server.post("/update_task", {**ORIGINAL, "title": title})
    wait_for(lambda: smtp.handler.count() == 1)
    message = smtp.handler.messages[0]
    assert message["Bcc"] is None
    assert smtp.handler.recipients[0] == ["test@example.com"]
    assert "\n" not in message["Subject"] and "Bcc: victim" in message["Subject"]


def test_accents_in_the_task_and_in_the_address_reach_the_mail(live_server, smtp):
    """A non-ASCII title is encoded in the headers; a non-ASCII address is sent with SMTPUTF8."""
    assert live_server.post("/update_task", {"task_id": "e1", "user_email": "test@example.com",
                                             "title": "Réunion à 10 h", "description": "café"}).status_code == 200
    assert live_server.post("/update_task", {"task_id": "e2", "user_email": "jürgen@example.com"}).status_code == 200
    wait_for(lambda: {m["To"] for m in smtp.handler.messages} >= {"test@example.com", "jürgen@example.com"}, 10,
             "both emails")
    accented = next(m for m in smtp.handler.messages if "e1" in m["Subject"])
    assert accented["Subject"] == "Task e1 created: Réunion à 10 h"
    assert "café" in accented.get_body(("plain",)).get_content()
    assert "café" in accented.get_body(("html",)).get_content()
