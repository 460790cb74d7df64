"""Settings: defaults in one place, read from the environment once, when the app is created."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any


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
    "MEMORY_DIAGNOSTICS": (False, as_bool),
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
            raise ValueError(f"invalid value for {name}: {raw!r}") from exc
    return config
