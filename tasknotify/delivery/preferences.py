"""Notification preferences: each user's document, the defaults from settings, the decision made for each email,
and the signed links of one-click unsubscribe.

Where each decision is made (docs/preferences.md says why): the write path
only writes the outbox row, as it always has; a notification worker decides
when it claims the row, with the preferences of that moment, whether the
email is sent, suppressed or held for a digest. The held event is the outbox
row written in the event's transaction, so nothing can be lost between the
two; the window of a digest opens at the time of its first event, not at the
time a worker got to it.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select

from tasknotify.preference_document import Preferences
from tasknotify.store.store import PreferencesRow, Store, utcnow

logger = logging.getLogger("preferences")

# The channels a user's preferences govern: email, and the log channel that stands in for it without SMTP_HOST.
# Webhooks belong to the deployment, not to a user: preferences never stop them.
USER_CHANNELS = frozenset({"email", "log"})


def defaults_from(config: Mapping[str, Any]) -> Preferences:
    """The preferences of a user who never set any: the DEFAULT_* settings."""
    return Preferences.model_validate({
        "email": {"enabled": config["DEFAULT_EMAIL_ENABLED"], "events": list(config["DEFAULT_EMAIL_EVENTS"]),
                  "digest_seconds": config["DEFAULT_DIGEST_SECONDS"]},
        "timezone": config["DEFAULT_TIMEZONE"],
        "quiet_hours": config["DEFAULT_QUIET_HOURS"],
    })


def encode(preferences: Preferences) -> str:
    """The stored form of a document."""
    return json.dumps(preferences.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)


@functools.lru_cache(maxsize=4096)
def decode(document: str) -> Preferences:
    """A stored document as a model; the same object for the same text (do not change it)."""
    return Preferences.model_validate_json(document)


# -- storage -----------------------------------------------------------------------------


def load(store: Store, user_email: str, defaults: Preferences) -> Preferences:
    """The user's preferences, or the defaults when they never set any."""
    with store.read() as session:
        document = session.scalar(select(PreferencesRow.document).where(PreferencesRow.user_email == user_email))
    return defaults if document is None else decode(document)


def save(store: Store, user_email: str, preferences: Preferences) -> Preferences:
    """Replace the user's preferences (the whole document)."""
    with store.write() as session:
        _put(session, user_email, preferences)
    return preferences


def disable_email(store: Store, user_email: str, defaults: Preferences) -> Preferences:
    """Turn the user's email off, keeping the rest of their preferences; idempotent."""
    with store.write() as session:
        document = session.scalar(select(PreferencesRow.document).where(PreferencesRow.user_email == user_email))
        current = defaults if document is None else decode(document)
        changed = current.model_copy(update={"email": current.email.model_copy(update={"enabled": False})})
        _put(session, user_email, changed)
    return changed


def _put(session: Any, user_email: str, preferences: Preferences) -> None:
    row = session.get(PreferencesRow, user_email)
    if row is None:
        session.add(PreferencesRow(user_email=user_email, document=encode(preferences), updated_at=utcnow()))
    else:
        row.document, row.updated_at = encode(preferences), utcnow()


# -- the decision for one email ------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What becomes of one event's email: sent now, suppressed (reason: the preference), or held until release."""

    action: str  # "send", "suppress" or "hold"
    reason: str | None = None  # suppress: "email.enabled" or "email.events"; hold: "digest" or "quiet_hours"
    release: datetime | None = None  # hold: when the digest it joins may go out (UTC, naive)


SEND = Decision("send")


def decide(preferences: Preferences, event_type: str, event_time: datetime, now: datetime) -> Decision:
    """The fate of an event's email under preferences, at now (times are UTC, naive)."""
    email = preferences.email
    if not email.enabled:
        return Decision("suppress", "email.enabled")
    if event_type not in email.events:
        return Decision("suppress", "email.events")
    if email.digest_seconds:
        # The window opens with its first event: a worker that comes late does not stretch it.
        release, reason = event_time + timedelta(seconds=email.digest_seconds), "digest"
    else:
        release, reason = now, None
    quiet_end = quiet_until(preferences, max(release, now))
    if quiet_end is not None:
        return Decision("hold", "quiet_hours", quiet_end)
    return SEND if reason is None else Decision("hold", reason, release)


def quiet_until(preferences: Preferences, moment: datetime) -> datetime | None:
    """When the quiet hours around moment end (UTC, naive), or None when moment is not in quiet hours."""
    quiet = preferences.quiet_hours
    if quiet is None:
        return None
    zone = ZoneInfo(preferences.timezone)
    local = moment.replace(tzinfo=UTC).astimezone(zone)
    start, end, now = time.fromisoformat(quiet.start), time.fromisoformat(quiet.end), local.time()
    day = local.date()
    if start < end:
        if not start <= now < end:
            return None
    elif now >= start:
        day += timedelta(days=1)  # overnight: ends tomorrow morning
    elif now >= end:
        return None
    return datetime.combine(day, end, tzinfo=zone).astimezone(UTC).replace(tzinfo=None)


# -- one-click unsubscribe -------------------------------------------------------------------


class InvalidToken(ValueError):
    """An unsubscribe token that this service did not sign (tampered, truncated, or of another key)."""


class UnsubscribeLinks:
    """Signed unsubscribe links: the token names the recipient and is signed with SECRET_KEY, so it can be
    neither forged nor turned into another user's."""

    def __init__(self, secret_key: str, public_url: str) -> None:
        self.public_url = public_url
        self._serializer = URLSafeSerializer(secret_key, salt="unsubscribe")
        self.token = functools.lru_cache(maxsize=4096)(self._token)

    def _token(self, email: str) -> str:
        return self._serializer.dumps(email)

    def url(self, email: str) -> str:
        """The one-click link of email's address: GET shows a page, POST unsubscribes."""
        return f"{self.public_url}/unsubscribe?t={self.token(email)}"

    def email_of(self, token: str) -> str:
        """The address a token was made for; InvalidToken when it is not one of ours."""
        try:
            email = self._serializer.loads(token)
        except BadSignature:
            raise InvalidToken("the unsubscribe link is not valid (was it cut or changed?)") from None
        if not isinstance(email, str) or not email:
            raise InvalidToken("the unsubscribe link is not valid")
        return email


def public_url(config: Mapping[str, Any]) -> str:
    """PUBLIC_URL, or one made of HOST and PORT (logged: links may be wrong behind a proxy)."""
    if config.get("PUBLIC_URL"):
        return config["PUBLIC_URL"]
    host = config.get("HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{config.get('PORT') or 5000}"
    logger.info("PUBLIC_URL is not set: links in emails start with %s, which may be wrong behind a proxy "
                "(set PUBLIC_URL to the address people reach the service at)", url)
    return url
