"""Settings: defaults in one place, read from the environment once, when the app is created."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent  # the repository: app.py, templates/, static/, migrations/


def as_bool(value: str) -> bool:
    """Parse a boolean environment value ("1", "true", "yes", "on" are true)."""
    return value.strip().lower() in {"1", "true", "yes", "on"}


def as_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def as_positive_int(value: str) -> int:
    number = as_int(value)
    if number < 1:
        raise ValueError("expected a positive integer")
    return number


def as_non_negative_int(value: str) -> int:
    number = as_int(value)
    if number < 0:
        raise ValueError("expected a whole number, 0 or more")
    return number


def as_float(value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def as_whole_seconds(value: str) -> int:
    """A whole number of seconds, 1 or more: the Socket.IO ping settings.

    python-engineio tells clients the ping interval cut to whole seconds (1.5 as
    1000 ms), and socket.io-client then gives up on a server that pings as set;
    the ping timeout keeps to the same unit.
    """
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = 0.0
    if not seconds.is_integer() or seconds < 1:
        raise ValueError("expected a whole number of seconds, 1 or more: the Socket.IO ping settings are whole "
                         "seconds")
    return int(seconds)


def as_seconds(value: str) -> float:
    """A positive, finite number of seconds."""
    seconds = float(value.strip())
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("expected a positive number of seconds")
    return seconds


def as_list(value: str) -> list[str]:
    """Parse a comma-separated list, dropping empty items."""
    return [item.strip() for item in value.split(",") if item.strip()]


def as_str(value: str) -> str:
    return value


def as_non_negative_float(value: str) -> float:
    number = as_float(value)
    if not number >= 0:
        raise ValueError("expected a number of 0 or more")
    return number


def as_positive_float(value: str) -> float:
    number = as_float(value)
    if not number > 0:
        raise ValueError("expected a number above 0")
    return number


def as_http_url(value: str) -> str:
    """An http:// or https:// URL with a host."""
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return url


# Signature algorithms of public keys (PyJWT's names). Never "none", and never HS*: an HMAC
# "key" from a JWKS would be public, and a public key used as an HMAC secret is the
# key-confusion attack.
PUBLIC_KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                         "EdDSA")


def as_public_key_algorithms(value: str) -> tuple[str, ...]:
    """A comma-separated list of public-key signature algorithms, e.g. RS256,ES256."""
    names = as_list(value)
    bad = [name for name in names if name not in PUBLIC_KEY_ALGORITHMS]
    if bad or not names:
        raise ValueError(f"expected some of {', '.join(PUBLIC_KEY_ALGORITHMS)} (never none or HS*)")
    return tuple(names)


SQLITE_SYNCHRONOUS_LEVELS = ("NORMAL", "FULL")


def as_sqlite_synchronous(value: str) -> str:
    """SQLite's synchronous setting for the embedded database: NORMAL or FULL."""
    level = value.strip().upper()
    if level not in SQLITE_SYNCHRONOUS_LEVELS:
        raise ValueError("expected NORMAL or FULL")
    return level


_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_HOST_PATTERN = re.compile(r"^(?P<name>\[[0-9a-f:.]+\]|[^:\[\]]+)(:(?P<port>[0-9]{1,5}))?$")


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header's name (lower case, no trailing dot; IPv6 in brackets) and port; ValueError when not one."""
    match = _HOST_PATTERN.match(value.strip().lower())
    if match is None:
        raise ValueError(f"not a host name: {value!r}")
    name, port = match["name"].rstrip("."), match["port"]
    if not name.startswith("[") and not _HOST_NAME.match(name):
        raise ValueError(f"not a host name: {value!r}")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"not a port: {port!r}")
    return name, None if port is None else int(port)


def as_part_names(value: str) -> tuple[str, ...]:
    """Names of the self-check's parts (fences.PARTS), comma-separated, or all."""
    from tasknotify.fences import as_part_names as parse

    return parse(value)


def as_allowed_hosts(value: str) -> list[str]:
    """Host names the server answers for: `name`, `name:port`, `.domain` or `*.domain` (its subdomains), `*`."""
    hosts = []
    for item in as_list(value.lower()):
        if item != "*":
            split_host(item[2:] if item.startswith("*.") else item[1:] if item.startswith(".") else item)
        hosts.append(item)
    return hosts


@dataclass(frozen=True)
class ProxyTrust:
    """How many values of each X-Forwarded-* header the proxies in front of the server add (0: none trusted)."""

    x_for: int = 0
    x_proto: int = 0
    x_host: int = 0


def as_trusted_proxies(value: str) -> ProxyTrust:
    """`N` (N proxies set every X-Forwarded-* header) or `for=N,proto=N,host=N` (missing ones are 0)."""
    value = value.strip()
    if value.isdigit():
        count = int(value)
        return ProxyTrust(count, count, count)
    counts = {}
    for item in as_list(value):
        name, _, number = item.partition("=")
        if name.strip() not in ("for", "proto", "host") or not number.strip().isdigit():
            raise ValueError("expected a number, or for=N,proto=N,host=N")
        counts[f"x_{name.strip()}"] = int(number)
    return ProxyTrust(**counts)


def as_event_types(value: str) -> list[str]:
    """A comma-separated list of task event types (empty: none)."""
    from tasknotify.preference_document import EVENT_TYPES

    types = as_list(value)
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown or len(set(types)) != len(types):
        raise ValueError(f"expected distinct event types among {', '.join(EVENT_TYPES)}")
    return types


def as_digest_seconds(value: str) -> int:
    from tasknotify.preference_document import check_digest_seconds

    return check_digest_seconds(as_int(value))


def as_timezone(value: str) -> str:
    from tasknotify.preference_document import check_timezone

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
    "JWT_JWKS_URL": (None, as_http_url),
    "OIDC_ISSUER": (None, as_http_url),
    "JWT_ISSUER": (None, as_str),
    "JWT_AUDIENCE": (None, as_str),
    "JWT_ALGORITHMS": (("RS256", "ES256", "EdDSA"), as_public_key_algorithms),
    "JWT_USER_CLAIM": ("email", as_str),
    "JWT_SCOPE_CLAIM": ("scope", as_str),
    "JWT_LEEWAY_SECONDS": (30.0, as_non_negative_float),
    "JWKS_MIN_REFRESH_SECONDS": (60.0, as_positive_float),
    "JWKS_TIMEOUT_SECONDS": (5.0, as_positive_float),
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
    # None: any host with auth on; with AUTH_DISABLED, localhost's names and HOST (against DNS rebinding).
    "ALLOWED_HOSTS": (None, as_allowed_hosts),
    "TRUSTED_PROXIES": (ProxyTrust(), as_trusted_proxies),
    "CORS_ORIGINS": (["http://localhost:4200", "http://127.0.0.1:4200"], as_list),
    "NOTIFY_WORKERS": (4, as_int),
    "NOTIFY_MAX_ATTEMPTS": (8, as_int),
    "NOTIFY_BACKOFF_SECONDS": (5.0, as_float),
    "NOTIFY_BACKOFF_MAX_SECONDS": (3600.0, as_float),
    "NOTIFY_LEASE_SECONDS": (60.0, as_float),
    "NOTIFY_POLL_SECONDS": (1.0, as_float),
    "NOTIFY_STOP_GRACE_SECONDS": (10.0, as_float),
    "SSE_HEARTBEAT_SECONDS": (15.0, as_float),
    "SSE_RETRY_MS": (1000, as_int),
    "SSE_RETRY_SPREAD_MS": (2000, as_non_negative_int),
    "SOCKETIO_PING_INTERVAL": (25, as_whole_seconds),
    "SOCKETIO_PING_TIMEOUT": (20, as_whole_seconds),
    "STREAM_QUEUE_SIZE": (1000, as_int),
    "DIRECT_WRITES": (True, as_bool),
    # For tests only: the self-check (fences.py) fails these parts, which then run on their fallbacks.
    "SELF_CHECK_FAIL": ((), as_part_names),
    "MAX_CONNECTIONS": (10000, as_int),
    "LISTEN_BACKLOG": (0, as_non_negative_int),  # 0: the system's maximum (httpserver.listen_backlog)
    "HEADER_TIMEOUT_SECONDS": (10.0, as_seconds),
    "KEEPALIVE_IDLE_SECONDS": (75.0, as_seconds),
    "MAX_CONTENT_LENGTH": (64 * 1024, as_int),
    "AUTH_DISABLED": (False, as_bool),
    "RATE_LIMIT_WRITES": ("120 per minute", as_str),
    "RATE_LIMIT_SERVICE_WRITES": ("100 per second", as_str),
    "RATE_LIMIT_STORAGE_URI": ("memory://", as_str),
    "MAX_STREAMS_PER_USER": (20, as_int),
    "MAX_SUBSCRIPTIONS_PER_CONNECTION": (100, as_positive_int),
    "LOG_LEVEL": ("INFO", as_str),
    "PUBLIC_URL": (None, as_public_url),
    # Each template must render: factory.load_settings checks them with delivery's as_templates_dir.
    "EMAIL_TEMPLATES_DIR": (None, as_str),
    "DEFAULT_EMAIL_ENABLED": (True, as_bool),
    "DEFAULT_EMAIL_EVENTS": (["task.created", "task.updated", "task.deleted"], as_event_types),
    "DEFAULT_DIGEST_SECONDS": (0, as_digest_seconds),
    "DEFAULT_TIMEZONE": ("UTC", as_timezone),
    "DEFAULT_QUIET_HOURS": (None, as_quiet_hours),
    "NOTIFY_CLOCK_FILE": (None, as_str),
    "MEMORY_DIAGNOSTICS": (False, as_bool),
}


def load_config(environ: Mapping[str, str] | None = None,
                parsers: Mapping[str, Callable[[str], Any]] | None = None) -> dict[str, Any]:
    """Return every setting: its default, overridden by the environment variable of its name.

    parsers: parsers of some settings, used instead of SETTINGS' (a layer above checks them its way).
    """
    environ = os.environ if environ is None else environ
    parsers = parsers or {}
    config: dict[str, Any] = {}
    for name, (default, parse) in SETTINGS.items():
        parse = parsers.get(name, parse)
        raw = environ.get(name)
        if raw is None or raw == "":
            config[name] = default
            continue
        try:
            config[name] = parse(raw)
        except ValueError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(f"invalid value for {name}: {raw!r}" + (f" ({reason})" if reason else "")) from exc
    check_identity_provider(config)
    return config


def check_identity_provider(config: Mapping[str, Any]) -> None:
    """ValueError unless the identity provider's settings are all unset or fit together."""
    jwks_url, oidc_issuer = config.get("JWT_JWKS_URL"), config.get("OIDC_ISSUER")
    issuer, audience = config.get("JWT_ISSUER"), config.get("JWT_AUDIENCE")
    if not jwks_url and not oidc_issuer:
        if issuer or audience:
            raise ValueError("JWT_ISSUER and JWT_AUDIENCE need JWT_JWKS_URL or OIDC_ISSUER (where the keys are)")
        return
    if jwks_url and oidc_issuer:
        raise ValueError("set JWT_JWKS_URL or OIDC_ISSUER, not both (OIDC_ISSUER finds the JWKS URL itself)")
    if oidc_issuer and issuer and issuer != oidc_issuer:
        raise ValueError(f"JWT_ISSUER {issuer!r} differs from OIDC_ISSUER {oidc_issuer!r} (leave JWT_ISSUER unset)")
    if not (issuer or oidc_issuer):
        raise ValueError("JWT_JWKS_URL needs JWT_ISSUER: the iss claim the identity provider's tokens carry")
    if not audience:
        raise ValueError("JWT_AUDIENCE is required with an identity provider: the aud its tokens must name")
    for name in ("JWT_USER_CLAIM", "JWT_SCOPE_CLAIM"):
        if not config.get(name):
            raise ValueError(f"{name} must name a claim")
