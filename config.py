"""Settings: defaults in one place, read from the environment once, when the app is created."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit


def as_bool(value: str) -> bool:
    """Parse a boolean environment value ("1", "true", "yes", "on" are true)."""
    return value.strip().lower() in {"1", "true", "yes", "on"}


def as_int(value: str) -> int:
    return int(value.strip())


def as_float(value: str) -> float:
    return float(value.strip())


def as_list(value: str) -> list[str]:
    """Parse a comma-separated list, dropping empty items."""
    return [item.strip() for item in value.split(",") if item.strip()]


def as_str(value: str) -> str:
    return value


SQLITE_SYNCHRONOUS_LEVELS = ("NORMAL", "FULL")


def as_sqlite_synchronous(value: str) -> str:
    """SQLite's synchronous setting for the embedded database: NORMAL or FULL."""
    level = value.strip().upper()
    if level not in SQLITE_SYNCHRONOUS_LEVELS:
        raise ValueError("expected NORMAL or FULL")
    return level


def as_event_types(value: str) -> list[str]:
    """A comma-separated list of task event types (empty: none)."""
    from schemas import EVENT_TYPES

    types = as_list(value)
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown or len(set(types)) != len(types):
        raise ValueError(f"expected distinct event types among {', '.join(EVENT_TYPES)}")
    return types


def as_digest_seconds(value: str) -> int:
    from schemas import check_digest_seconds

    return check_digest_seconds(as_int(value))


def as_timezone(value: str) -> str:
    from schemas import check_timezone

    return check_timezone(value.strip())


def as_quiet_hours(value: str) -> dict[str, str] | None:
    """Quiet hours as START-END in 24-hour time ("22:00-07:00"), or "off"."""
    if value.strip().lower() in ("off", "none"):
        return None
    match = re.fullmatch(r"\s*(([01]\d|2[0-3]):[0-5]\d)\s*-\s*(([01]\d|2[0-3]):[0-5]\d)\s*", value)
    if match is None or match[1] == match[3]:
        raise ValueError("expected START-END such as 22:00-07:00 (two different times), or off")
    return {"start": match[1], "end": match[3]}


def as_public_url(value: str) -> str:
    """The base URL people reach the service at: http(s)://host[:port][/path], without query or fragment."""
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment \
            or not url.isascii() or any(c.isspace() or c in '<>"' for c in url):
        raise ValueError("expected an http(s) URL such as https://tasks.example.com")
    return url


def as_templates_dir(value: str) -> str:
    """A folder of email templates that override the package's; each one must render (checked at start)."""
    from email_templates import EmailTemplates, TemplateProblem

    try:
        EmailTemplates(value).check()
    except TemplateProblem as exc:
        raise ValueError(str(exc)) from None
    return value


# name -> (default, parser). Every name here is an environment variable of the same
# name and is documented in the README's settings table.
SETTINGS: dict[str, tuple[Any, Callable[[str], Any]]] = {
    "HOST": ("127.0.0.1", as_str),
    "PORT": (5000, as_int),
    "INSTANCE_PATH": (None, as_str),
    "DATABASE_URL": (None, as_str),
    "SQLITE_SYNCHRONOUS": ("NORMAL", as_sqlite_synchronous),
    "REDIS_URL": (None, as_str),
    "REDIS_CHANNEL": ("task-events", as_str),
    "SECRET_KEY": (None, as_str),
    "SMTP_HOST": (None, as_str),
    "SMTP_PORT": (25, as_int),
    "SMTP_USERNAME": (None, as_str),
    "SMTP_PASSWORD": (None, as_str),
    "SMTP_STARTTLS": (False, as_bool),
    "SMTP_TIMEOUT_SECONDS": (30.0, as_float),
    "MAIL_FROM": ("tasks@localhost", as_str),
    "WEBHOOK_URL": (None, as_str),
    "WEBHOOK_SECRET": (None, as_str),
    "WEBHOOK_TIMEOUT_SECONDS": (10.0, as_float),
    "CORS_ORIGINS": (["http://localhost:4200", "http://127.0.0.1:4200"], as_list),
    "NOTIFY_WORKERS": (4, as_int),
    "NOTIFY_MAX_ATTEMPTS": (8, as_int),
    "NOTIFY_BACKOFF_SECONDS": (5.0, as_float),
    "NOTIFY_BACKOFF_MAX_SECONDS": (3600.0, as_float),
    "NOTIFY_LEASE_SECONDS": (60.0, as_float),
    "NOTIFY_POLL_SECONDS": (1.0, as_float),
    "NOTIFY_STOP_GRACE_SECONDS": (10.0, as_float),
    "SSE_HEARTBEAT_SECONDS": (15.0, as_float),
    "SSE_RETRY_MS": (2000, as_int),
    "SOCKETIO_PING_INTERVAL": (25.0, as_float),
    "SOCKETIO_PING_TIMEOUT": (20.0, as_float),
    "STREAM_QUEUE_SIZE": (1000, as_int),
    "DIRECT_WRITES": (True, as_bool),
    "MAX_CONNECTIONS": (10000, as_int),
    "MAX_CONTENT_LENGTH": (64 * 1024, as_int),
    "AUTH_DISABLED": (False, as_bool),
    "RATE_LIMIT_WRITES": ("120 per minute", as_str),
    "RATE_LIMIT_STORAGE_URI": ("memory://", as_str),
    "MAX_STREAMS_PER_USER": (20, as_int),
    "LOG_LEVEL": ("INFO", as_str),
    "PUBLIC_URL": (None, as_public_url),
    "EMAIL_TEMPLATES_DIR": (None, as_templates_dir),
    "DEFAULT_EMAIL_ENABLED": (True, as_bool),
    "DEFAULT_EMAIL_EVENTS": (["task.created", "task.updated", "task.deleted"], as_event_types),
    "DEFAULT_DIGEST_SECONDS": (0, as_digest_seconds),
    "DEFAULT_TIMEZONE": ("UTC", as_timezone),
    "DEFAULT_QUIET_HOURS": (None, as_quiet_hours),
    "NOTIFY_CLOCK_FILE": (None, as_str),
}


def load_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return every setting: its default, overridden by the environment variable of its name."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for name, (default, parse) in SETTINGS.items():
        raw = environ.get(name)
        if raw is None or raw == "":
            config[name] = default
            continue
        try:
            config[name] = parse(raw)
        except ValueError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(f"invalid value for {name}: {raw!r}" + (f" ({reason})" if reason else "")) from exc
    return config
