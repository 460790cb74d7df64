"""Settings: defaults in one place, read from the environment once, when the app is created."""

from __future__ import annotations

import os
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
    "RATE_LIMIT_SERVICE_WRITES": ("100 per second", as_str),
    "RATE_LIMIT_STORAGE_URI": ("memory://", as_str),
    "MAX_STREAMS_PER_USER": (20, as_int),
    "LOG_LEVEL": ("INFO", as_str),
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
            raise ValueError(f"invalid value for {name}: {raw!r} ({exc})") from exc
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
