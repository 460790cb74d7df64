"""Email notifications end to end: the real server, a real SMTP server (aiosmtpd), slow, failing, killed."""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from support import RecordingSMTPHandler, SMTPServer, free_port, wait_for
from tasknotify.delivery.channels import Delivery, DeliveryError, EmailChannel
from tasknotify.delivery.preferences import UnsubscribeLinks
from tasknotify.delivery.templates import EmailTemplates
from test_webhook import SECRET as WEBHOOK_SECRET
from test_webhook import Receiver

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


# -- permanent and transient failures ---------------------------------------------------


@pytest.fixture
def ascii_only_smtp() -> Iterator[SMTPServer]:
    """A mail server that does not offer SMTPUTF8, so it cannot take an internationalized address."""
    server = SMTPServer(smtputf8=False).start()
    yield server
    server.stop()


def test_an_address_the_mail_server_cannot_take_is_dead_after_one_attempt(start_server, ascii_only_smtp):
    server = start_server(**ascii_only_smtp.env)
    for task_id, address in (("intl-1", "jörg@example.com"), ("intl-2", "用户@例子.广告"),
                             ("ascii", "test@example.com")):
        assert server.post("/update_task", {"task_id": task_id, "user_email": address}).status_code == 200
    wait_for(lambda: ascii_only_smtp.handler.count() == 1, 10, "the email to the ASCII address")
    for task_id in ("intl-1", "intl-2"):
        [note] = wait_for(lambda t=task_id: [n for n in notifications(server, task_id=t) if n["status"] == "dead"],
                          20, f"{task_id}'s notification to be dead")
        detail = server.get(f"/notifications/{note['id']}").json()
        assert detail["status"] == "dead" and detail["attempts"] == 1, detail
        assert detail["last_error"].startswith("permanent: "), detail
        assert "SMTPUTF8" in detail["last_error"] and detail["recipient"] in detail["last_error"], detail
    wait_for(lambda: notifications(server, task_id="ascii")[0]["status"] == "sent")


def test_a_refused_recipient_is_dead_at_once_and_a_busy_one_is_retried(live_server, smtp):
    smtp.handler.rcpt_replies = {"nobody@example.com": ["550 5.1.1 No such user"] * 10,
                                 "busy@example.com": ["450 4.2.1 Mailbox busy, try later"] * 2}
    live_server.post("/update_task", {"task_id": "nobody", "user_email": "nobody@example.com"})
    live_server.post("/update_task", {"task_id": "busy", "user_email": "busy@example.com"})
    [dead] = wait_for(lambda: [n for n in notifications(live_server, task_id="nobody") if n["status"] == "dead"],
                      20, "the refused recipient's notification to be dead")
    assert dead["attempts"] == 1 and smtp.handler.rcpt_attempts["nobody@example.com"] == 1
    assert dead["last_error"].startswith("permanent: ") and "550 5.1.1 No such user" in dead["last_error"], dead
    wait_for(lambda: notifications(live_server, task_id="busy")[0]["status"] == "sent", 20, "the busy one sent")
    assert notifications(live_server, task_id="busy")[0]["attempts"] == 3
    assert smtp.handler.recipients == [["busy@example.com"]]


def channel_for(port: int, **settings) -> EmailChannel:
    return EmailChannel({"SMTP_HOST": "127.0.0.1", "SMTP_PORT": port, "SMTP_USERNAME": None, "SMTP_PASSWORD": None,
                         "SMTP_STARTTLS": False, "SMTP_TIMEOUT_SECONDS": 5.0, "MAIL_FROM": "tasks@notify.test",
                         **settings}, UnsubscribeLinks("secret", "http://localhost:5000"), EmailTemplates())


def delivery_to(recipient: str) -> Delivery:
    task = {"task_id": "1", "user_email": recipient, "title": "", "description": "", "status": "open"}
    return Delivery(notification_id=1, channel="email", recipient=recipient, attempt=1,
                    event={"id": 1, "type": "task.created", "task_id": "1", "task": task,
                           "occurred_at": "2026-11-29T03:00:00.000Z"})


def failure(channel: EmailChannel, recipient: str = "test@example.com") -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        channel.send(delivery_to(recipient))
    return caught.value


def test_smtp_refusals_of_the_message_are_permanent_and_4xx_transient(smtp):
    channel = channel_for(smtp.port)
    smtp.handler.rcpt_replies = {"gone@example.com": ["550 5.1.1 No such user"],
                                 "later@example.com": ["452 4.2.2 Mailbox full"]}
    assert not failure(channel, "gone@example.com").retryable
    assert failure(channel, "later@example.com").retryable
    smtp.handler.mail_replies = ["553 5.1.8 Sender address rejected"]
    refused_sender = failure(channel)
    assert not refused_sender.retryable and "553" in str(refused_sender)
    smtp.handler.mail_replies = ["421 4.7.0 Try again later"]
    assert failure(channel).retryable
    smtp.handler.temporary_failures = 1  # DATA answered 451
    assert failure(channel).retryable
    channel.send(delivery_to("test@example.com"))  # the same channel, and its connection, still deliver
    assert smtp.handler.recipients == [["test@example.com"]]


def test_a_missing_smtputf8_is_permanent_for_the_address_that_needs_it(ascii_only_smtp):
    channel = channel_for(ascii_only_smtp.port)
    error = failure(channel, "jörg@example.com")
    assert not error.retryable
    assert str(error) == "the mail server does not support SMTPUTF8, which the address jörg@example.com needs"
    channel.send(delivery_to("test@example.com"))
    assert ascii_only_smtp.handler.count() == 1


def test_problems_of_the_mail_server_setup_are_transient():
    """Not this message's fault: once the setup is fixed, the retries deliver it."""
    handler = RecordingSMTPHandler()

    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        return AuthResult(success=auth_data.password == b"right", handled=False)

    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    try:
        bad_password = failure(channel_for(port, SMTP_USERNAME="tasks", SMTP_PASSWORD="wrong"))
        assert bad_password.retryable and "535" in str(bad_password)
        no_starttls = failure(channel_for(port, SMTP_STARTTLS=True))
        assert no_starttls.retryable and "STARTTLS" in str(no_starttls)
        channel_for(port, SMTP_USERNAME="tasks", SMTP_PASSWORD="right").send(delivery_to("test@example.com"))
        assert handler.count() == 1
    finally:
        controller.stop()
    refused = failure(channel_for(port))  # nothing listens any more
    assert refused.retryable and "SMTP connection failed" in str(refused)


def test_a_webhook_refusal_is_dead_at_once_and_throttling_is_retried(start_server):
    """Webhooks follow the same rule: a 4xx other than 408 and 429 will not change by itself."""
    receiver = Receiver().start()
    try:
        server = start_server(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=WEBHOOK_SECRET)
        receiver.statuses = [404]
        server.post("/update_task", {"task_id": "gone", "user_email": "test@example.com"})
        [dead] = wait_for(lambda: [n for n in notifications(server, task_id="gone")
                                   if n["channel"] == "webhook" and n["status"] == "dead"], 20, "the 404 to be dead")
        assert dead["attempts"] == 1 and receiver.count() == 1
        assert dead["last_error"].startswith("permanent: webhook answered 404"), dead
        receiver.statuses = [429, 408]
        server.post("/update_task", {"task_id": "slow", "user_email": "test@example.com"})
        [sent] = wait_for(lambda: [n for n in notifications(server, task_id="slow")
                                   if n["channel"] == "webhook" and n["status"] == "sent"], 20, "the 429 then sent")
        assert sent["attempts"] == 3 and receiver.count() == 4
    finally:
        receiver.stop()


def test_mail_goes_to_the_canonical_form_of_the_address(live_server, smtp):
    assert live_server.post("/update_task", {"task_id": "c1", "user_email": "Test@EXAMPLE.com"}).status_code == 200
    wait_for(lambda: smtp.handler.count() == 1, 10, "the email")
    assert smtp.handler.recipients == [["test@example.com"]]
    assert smtp.handler.messages[0]["To"] == "test@example.com"
    assert notifications(live_server)[0]["recipient"] == "test@example.com"
