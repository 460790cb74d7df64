"""The webhook channel against a real receiving HTTP server that checks every signature."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from support import LiveServer, free_port, wait_for
from tasknotify.delivery.channels import Delivery, DeliveryError
from tasknotify.delivery.webhooks import WebhookChannel, encode_body, sign, verify_signature

SECRET = "whsec-test-3f1c9a"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    valid: bool  # verify_signature's verdict on arrival

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """http.server on 127.0.0.1: records each POST, checks its signature, answers with the status it is told.

    statuses: answers to give, first to last, then `default`; hang: hold every request unanswered until set.
    """

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.default = 200
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                valid = verify_signature(receiver.secret, headers.get("x-webhook-timestamp"), body,
                                         headers.get("x-webhook-signature"))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, headers, body, valid))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                receiver.release.wait(30)
                if not valid:
                    status = 401
                answer = json.dumps({"ok": 200 <= status < 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tasks"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self._lock:
            return len(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def event(event_id: int = 7, task_id: str = "123", title: str = "Write the report") -> dict[str, Any]:
    task = {"task_id": task_id, "user_email": "ann@example.com", "title": title, "description": "",
            "status": "open", "created_at": "2026-11-28T17:00:00.000Z", "updated_at": "2026-11-28T17:00:00.000Z"}
    return {"id": event_id, "type": "task.created", "task_id": task_id, "task": task,
            "occurred_at": "2026-11-28T17:00:00.000Z"}


def delivery(notification_id: int = 41, attempt: int = 1, **kwargs: Any) -> Delivery:
    return Delivery(notification_id=notification_id, channel="webhook", recipient="", attempt=attempt,
                    event=event(**kwargs))


def channel(url: str, **config: Any) -> WebhookChannel:
    return WebhookChannel({"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET, **config})


# -- signing and verifying --------------------------------------------------------


def test_a_delivery_is_posted_signed_with_its_ids(receiver: Receiver) -> None:
    before = int(time.time())
    channel(receiver.url).send(delivery(notification_id=41, event_id=7, title="Zoë's report"))
    [request] = receiver.requests
    assert request.valid
    assert request.path == "/hooks/tasks"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-webhook-id"] == "41"
    assert request.headers["x-webhook-event-id"] == "7"
    timestamp = int(request.headers["x-webhook-timestamp"])
    assert before <= timestamp <= int(time.time())
    assert request.headers["x-webhook-signature"] == sign(SECRET, timestamp, request.body)
    assert request.headers["x-webhook-signature"].startswith("sha256=")
    # The body is the event, as compact JSON, exactly what was signed.
    assert request.event == event(event_id=7, title="Zoë's report")
    assert request.body == encode_body(event(event_id=7, title="Zoë's report"))
    assert b": " not in request.body and b", " not in request.body


def test_the_webhook_id_is_stable_across_retries(receiver: Receiver) -> None:
    hook = channel(receiver.url)
    hook.send(delivery(notification_id=9, attempt=1))
    hook.send(delivery(notification_id=9, attempt=2))
    hook.send(delivery(notification_id=10, attempt=1))
    assert [r.headers["x-webhook-id"] for r in receiver.requests] == ["9", "9", "10"]
    assert all(r.valid for r in receiver.requests)


def test_verify_signature_accepts_only_the_signed_body_and_timestamp() -> None:
    body = encode_body(event())
    now = 1_800_000_000
    signature = sign(SECRET, now, body)
    assert verify_signature(SECRET, str(now), body, signature, now=now)
    assert verify_signature(SECRET.encode(), now, body.decode(), signature, now=now + 299)
    # Tampered body, timestamp or signature, or another secret.
    assert not verify_signature(SECRET, str(now), body.replace(b"Write", b"Wrote"), signature, now=now)
    assert not verify_signature(SECRET, str(now), body + b" ", signature, now=now)
    assert not verify_signature(SECRET, str(now + 1), body, signature, now=now)
    assert not verify_signature("another-secret", str(now), body, signature, now=now)
    assert not verify_signature(SECRET, str(now), body, signature[:-1] + ("0" if signature[-1] != "0" else "1"),
                                now=now)
    # Malformed input is a refusal, never an exception.
    for bad_signature in (None, "", signature.removeprefix("sha256="), "sha1=" + signature[7:], "sha256=é"):
        assert not verify_signature(SECRET, str(now), body, bad_signature, now=now)
    for bad_timestamp in (None, "", "abc", "-5", "1e9", " ", "１２３"):
        assert not verify_signature(SECRET, bad_timestamp, body, signature, now=now)


def test_verify_signature_rejects_replays_and_far_future_timestamps() -> None:
    body = encode_body(event())
    sent = 1_800_000_000
    signature = sign(SECRET, sent, body)
    assert verify_signature(SECRET, str(sent), body, signature, now=sent + 300)
    assert not verify_signature(SECRET, str(sent), body, signature, now=sent + 301)  # an old request replayed
    assert not verify_signature(SECRET, str(sent), body, signature, now=sent - 301)  # from the future
    assert verify_signature(SECRET, str(sent), body, signature, now=sent + 3000, tolerance=3600)
    # Without `now`, the clock decides.
    fresh = int(time.time())
    assert verify_signature(SECRET, str(fresh), body, sign(SECRET, fresh, body))
    assert not verify_signature(SECRET, str(fresh - 600), body, sign(SECRET, fresh - 600, body))


def test_the_receiver_refuses_a_tampered_request(receiver: Receiver) -> None:
    import requests

    body = encode_body(event())
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "X-Webhook-Timestamp": str(timestamp),
               "X-Webhook-Signature": sign(SECRET, timestamp, body)}
    tampered = body.replace(b'"status":"open"', b'"status":"done"')
    assert tampered != body
    response = requests.post(receiver.url, data=tampered, headers=headers, timeout=5)
    assert response.status_code == 401
    assert [r.valid for r in receiver.requests] == [False]


# -- failures ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_server_errors_and_throttling_are_retryable(receiver: Receiver, status: int) -> None:
    receiver.default = status
    with pytest.raises(DeliveryError) as caught:
        channel(receiver.url).send(delivery())
    assert caught.value.retryable
    assert str(status) in str(caught.value)
    assert receiver.requests[0].valid


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301, 302])
def test_other_refusals_are_permanent(receiver: Receiver, status: int) -> None:
    receiver.default = status
    with pytest.raises(DeliveryError) as caught:
        channel(receiver.url).send(delivery())
    assert not caught.value.retryable
    assert str(status) in str(caught.value)
    assert receiver.count() == 1  # a redirect is not followed


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_2xx_is_a_delivery(receiver: Receiver, status: int) -> None:
    receiver.default = status
    channel(receiver.url).send(delivery())
    assert receiver.count() == 1


@pytest.mark.serial
def test_a_receiver_that_never_answers_times_out_retryably(receiver: Receiver) -> None:
    receiver.release.clear()  # hold every request
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        channel(receiver.url, WEBHOOK_TIMEOUT_SECONDS=0.3).send(delivery())
    elapsed = time.monotonic() - started
    assert caught.value.retryable
    assert "timed out" in str(caught.value)
    assert 0.25 <= elapsed < 3
    assert receiver.count() == 1


def test_nothing_listening_is_a_retryable_connection_error() -> None:
    with pytest.raises(DeliveryError) as caught:
        channel(f"http://127.0.0.1:{free_port()}/hook", WEBHOOK_TIMEOUT_SECONDS=2).send(delivery())
    assert caught.value.retryable
    assert "connection failed" in str(caught.value)


def test_a_misconfigured_channel_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        WebhookChannel({"WEBHOOK_URL": "http://127.0.0.1:1/hook", "WEBHOOK_SECRET": ""})
    for url in ("", "ftp://example.com/hook", "127.0.0.1:8080/hook", "http:///nohost"):
        with pytest.raises(ValueError, match="WEBHOOK_URL"):
            WebhookChannel({"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET})
    with pytest.raises(ValueError, match="WEBHOOK_TIMEOUT_SECONDS"):
        channel("http://127.0.0.1:1/hook", WEBHOOK_TIMEOUT_SECONDS=0)
    assert channel("https://hooks.example.com/x").timeout == 10.0
    assert channel("https://hooks.example.com/x", WEBHOOK_TIMEOUT_SECONDS=2.5).timeout == 2.5


# -- end to end ---------------------------------------------------------------------


def test_an_update_reaches_the_webhook_signed(start_server: Callable[..., LiveServer], receiver: Receiver) -> None:
    receiver.statuses = [503]  # the first attempt fails and is retried
    server = start_server(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET, WEBHOOK_TIMEOUT_SECONDS="5")
    answer = server.post("/update_task", {"task_id": "hook-1", "user_email": "test@example.com",
                                          "title": "Signed"})
    assert answer.status_code == 200, answer.text
    event_id = answer.json()["event_id"]

    wait_for(lambda: receiver.count() >= 2, 15, "the webhook to be retried after its 503")
    first, second = receiver.requests[:2]
    assert first.valid and second.valid
    assert second.event == first.event
    assert second.event["id"] == event_id
    assert second.event["type"] == "task.created"
    assert second.event["task"]["title"] == "Signed"
    assert second.headers["x-webhook-event-id"] == str(event_id)
    assert first.headers["x-webhook-id"] == second.headers["x-webhook-id"]

    def sent() -> dict[str, Any] | None:
        rows = server.get("/notifications?task_id=hook-1").json()["notifications"]
        hooks = [row for row in rows if row["channel"] == "webhook"]
        return hooks[0] if hooks and hooks[0]["status"] == "sent" else None

    row = wait_for(sent, 10, "the webhook notification to be marked sent")
    assert row["id"] == int(second.headers["x-webhook-id"])
    assert row["attempts"] == 2
    assert row["recipient"] == receiver.url
