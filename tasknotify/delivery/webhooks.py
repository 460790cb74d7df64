"""The webhook channel: each notification is POSTed, signed, to WEBHOOK_URL.

Every request carries

    Content-Type: application/json
    X-Webhook-Timestamp: <unix seconds when this attempt was made>
    X-Webhook-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed with WEBHOOK_SECRET>
    X-Webhook-Id: <notification id>          the same on every retry of one notification
    X-Webhook-Event-Id: <event id>

and the event payload as compact JSON. A 2xx answer is a delivery; anything
else is a failure. 5xx, 408, 429, timeouts and connection errors are retried
(the outbox's backoff); other answers (3xx, 4xx) are permanent and make the
notification dead at once, to be retried by hand once the receiver is fixed.

verify_signature() is what a receiver runs; see docs/webhooks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from tasknotify.delivery.channels import Delivery, DeliveryError

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_TOLERANCE_SECONDS = 300
USER_AGENT = "task-notifications-webhook/1"
_RETRYABLE_4XX = frozenset({408, 429})


def encode_body(event: Mapping[str, Any]) -> bytes:
    """The request body: the event payload as compact UTF-8 JSON, encoded once and signed as sent."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The X-Webhook-Signature value: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str | int | None,
    body: bytes | str,
    signature: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when signature is the sender's signature of timestamp and body, made within tolerance seconds.

    For receivers: pass the X-Webhook-Timestamp and X-Webhook-Signature headers and the raw body bytes
    exactly as received (before any JSON parsing). A timestamp more than tolerance seconds away from now,
    in the past (a replay) or in the future, is refused. The comparison takes constant time.
    """
    if timestamp is None or signature is None:
        return False
    text = str(timestamp).strip()
    if not text.isascii() or not text.isdigit():
        return False
    sent_at = int(text)
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        return False
    expected = sign(secret, text, _as_bytes(body))
    try:
        given = signature.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), given)


class WebhookChannel:
    """POSTs each notification's event to WEBHOOK_URL, signed with WEBHOOK_SECRET."""

    name = "webhook"

    def __init__(self, config: Mapping[str, Any]) -> None:
        url = config.get("WEBHOOK_URL") or ""
        secret = config.get("WEBHOOK_SECRET") or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"WEBHOOK_URL must be an http:// or https:// URL, not {url!r}")
        if not secret:
            raise ValueError("WEBHOOK_SECRET must be set when WEBHOOK_URL is: webhooks are always signed")
        timeout = config.get("WEBHOOK_TIMEOUT_SECONDS")
        self.url: str = url
        self.secret: bytes = secret.encode("utf-8")
        self.timeout: float = DEFAULT_TIMEOUT_SECONDS if timeout is None else float(timeout)
        if self.timeout <= 0:
            raise ValueError("WEBHOOK_TIMEOUT_SECONDS must be positive")

    def headers(self, delivery: Delivery, body: bytes, timestamp: int) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Webhook-Id": str(delivery.notification_id),
            "X-Webhook-Event-Id": str(delivery.event.get("id", "")),
            "X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": sign(self.secret, timestamp, body),
        }

    def send(self, delivery: Delivery) -> None:
        body = encode_body(delivery.event)
        headers = self.headers(delivery, body, int(time.time()))
        try:
            # A fresh connection per delivery: no state shared between worker threads.
            # Redirects are not followed: the signed POST must reach the configured URL.
            response = requests.post(self.url, data=body, headers=headers, timeout=(self.timeout, self.timeout),
                                     allow_redirects=False, stream=True)
        except requests.Timeout as exc:
            raise DeliveryError(f"webhook timed out after {self.timeout:g}s: {exc}", retryable=True) from exc
        except requests.RequestException as exc:
            raise DeliveryError(f"webhook connection failed: {exc!r}", retryable=True) from exc
        with response:
            status = response.status_code
            if 200 <= status < 300:
                return
            excerpt = _excerpt(response)
        retryable = status >= 500 or status in _RETRYABLE_4XX
        raise DeliveryError(f"webhook answered {status} {response.reason or ''}".rstrip() + excerpt,
                            retryable=retryable)


def _excerpt(response: requests.Response, limit: int = 200) -> str:
    """The start of an error answer's body, for the notification's last_error."""
    try:
        raw = response.raw.read(limit, decode_content=True) or b""
    except Exception:  # noqa: BLE001 - the status is the error; the body is only a hint
        return ""
    text = raw.decode("utf-8", errors="replace").strip()
    return f": {text}" if text else ""
