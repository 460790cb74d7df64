"""Tokens from the user's identity provider: JWTs signed with its private keys, checked with its public ones.

The public keys come from a JWKS endpoint (JWT_JWKS_URL, or the `jwks_uri` of
OIDC_ISSUER's discovery document). They are cached by (JWKS URL, kid), never
by kid alone, so a key can only ever check tokens of the provider that
published it. The cache is refreshed in the background before its age
(Cache-Control max-age, else DEFAULT_MAX_AGE) runs out; a token naming an
unknown kid makes at most one refetch per JWKS_MIN_REFRESH_SECONDS; while the
provider is down the cached keys keep working. With no key at all a token
cannot be checked, which is the provider's failure, not the token's:
KeysUnavailable, not Refused.

Errors: Refused (the token is not acceptable: a 401) and KeysUnavailable (no
key to check it with: a 503). This module knows nothing of Flask; tokens.py
turns an Identity into a Viewer.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from jwt.algorithms import has_crypto

from tasknotify.ids import canonical_email

logger = logging.getLogger("jwks")

DEFAULT_MAX_AGE = 600.0  # seconds, when the JWKS answer names no usable max-age
REFRESH_AT = 0.8  # refresh once this share of the max-age has passed
MIN_REFRESH_DELAY = 1.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


class Refused(Exception):
    """A token that cannot be accepted (a 401)."""


class KeysUnavailable(Exception):
    """The provider has given no key to check a token with, and cannot be reached now (a 503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Settings:
    """The identity provider's settings (config.check_identity_provider has checked that they fit)."""

    issuer: str
    audience: str
    jwks_url: str | None  # None: found through OIDC discovery
    oidc_issuer: str | None
    algorithms: tuple[str, ...]
    user_claim: str
    scope_claim: str
    leeway: float
    min_refresh: float
    timeout: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings | None:
        """The provider's settings, or None when no provider is configured."""
        if not config.get("JWT_JWKS_URL") and not config.get("OIDC_ISSUER"):
            return None
        return cls(issuer=config.get("JWT_ISSUER") or config["OIDC_ISSUER"], audience=config["JWT_AUDIENCE"],
                   jwks_url=config.get("JWT_JWKS_URL"), oidc_issuer=config.get("OIDC_ISSUER"),
                   algorithms=tuple(config["JWT_ALGORITHMS"]), user_claim=config["JWT_USER_CLAIM"],
                   scope_claim=config["JWT_SCOPE_CLAIM"], leeway=float(config["JWT_LEEWAY_SECONDS"]),
                   min_refresh=float(config["JWKS_MIN_REFRESH_SECONDS"]),
                   timeout=float(config["JWKS_TIMEOUT_SECONDS"]))

    @property
    def source(self) -> str:
        """Where the keys come from, for messages."""
        return self.jwks_url or f"{self.oidc_issuer} (OIDC discovery)"


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for: a canonical email, its scopes, and when it stops being accepted."""

    email: str
    scopes: frozenset[str]
    expires_at: float


class KeyCache:
    """Public keys by (JWKS URL, kid)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}
        self._lock = threading.Lock()

    def get(self, url: str, kid: str) -> jwt.PyJWK | None:
        return self._keys.get((url, kid))

    def replace(self, url: str, keys: Mapping[str, jwt.PyJWK]) -> None:
        """Make keys the whole set of url's keys: a kid that left the JWKS is forgotten."""
        with self._lock:
            kept = {key: value for key, value in self._keys.items() if key[0] != url}
            kept.update({(url, kid): key for kid, key in keys.items()})
            self._keys = kept

    def count(self, url: str | None) -> int:
        return sum(1 for key in self._keys if key[0] == url)


def max_age(cache_control: str | None) -> float:
    """The seconds a JWKS answer may be kept: its Cache-Control max-age when above 0, else DEFAULT_MAX_AGE."""
    match = _MAX_AGE.search(cache_control or "")
    seconds = int(match.group(1)) if match else 0
    return float(seconds) if seconds > 0 else DEFAULT_MAX_AGE


def usable_keys(document: Any, algorithms: tuple[str, ...]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by kid, for the allowed algorithms; ValueError when there is none."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    public = [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("kid"), str)
              and entry.get("use", "sig") == "sig" and entry.get("kty") != "oct" and "d" not in entry]
    keys: dict[str, jwt.PyJWK] = {}
    for entry in public:
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a key type or curve PyJWT cannot use, as PyJWKSet skips it
        if key.algorithm_name in algorithms:
            keys.setdefault(entry["kid"], key)
    if not keys:
        raise ValueError(f"the JWKS has no signing key with a kid for {', '.join(algorithms)}")
    return keys


Fetch = Callable[[str, float], requests.Response]


def _get(url: str, timeout: float) -> requests.Response:
    response = requests.get(url, timeout=timeout, headers={"Accept": "application/json"})
    response.raise_for_status()
    return response


class Provider:
    """One identity provider: its keys (fetched, cached, refreshed) and the checks its tokens must pass."""

    def __init__(self, settings: Settings, cache: KeyCache | None = None, fetch: Fetch = _get) -> None:
        if not has_crypto:
            raise ValueError("an identity provider's keys need the cryptography package (pip install cryptography)")
        self.settings = settings
        for url in (settings.jwks_url, settings.oidc_issuer):
            if url and url.startswith("http:") and urlsplit(url).hostname not in ("localhost", "127.0.0.1", "::1"):
                logger.warning("%s is plain http: whoever sits between this server and it can sign tokens", url)
        self.cache = cache or KeyCache()
        self._fetch = fetch
        self._jwks_url = settings.jwks_url
        self._fetch_lock = threading.Lock()
        self._last_on_demand: float | None = None  # monotonic time of the last fetch a token asked for
        self._attempted_at: float | None = None  # monotonic time the last fetch (of any kind) ended
        self._fetched_at: float | None = None  # ... and the last one that succeeded
        self._max_age = DEFAULT_MAX_AGE
        self._failures = 0
        self._last_error: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    # -- tokens ------------------------------------------------------------------------

    def verify(self, token: str) -> Identity:
        """The identity a token of this provider speaks for; Refused or KeysUnavailable when there is none."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Refused(f"invalid token: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.settings.algorithms:
            raise Refused(f"invalid token: the algorithm {alg!r} is not one of JWT_ALGORITHMS")
        if not isinstance(kid, str) or not kid:
            raise Refused("invalid token: it names no key (kid)")
        return _checked(token, self.key(kid), self.settings)

    def key(self, kid: str) -> jwt.PyJWK:
        """The provider's key kid, refetching the JWKS when it is unknown (at most once per min_refresh)."""
        key = self._cached(kid)
        if key is None:
            self._refetch_for_token()
            key = self._cached(kid)
        if key is not None:
            return key
        if self.cache.count(self._jwks_url) == 0:
            raise KeysUnavailable(f"no keys from the identity provider {self.settings.source}: "
                                  f"{self._last_error or 'not fetched yet'}", self.retry_after())
        raise Refused(f"invalid token: unknown key id {kid!r} at the identity provider")

    def _cached(self, kid: str) -> jwt.PyJWK | None:
        url = self._jwks_url
        return None if url is None else self.cache.get(url, kid)

    def retry_after(self) -> int:
        """Seconds until a fetch of the keys may be tried again (at least 1)."""
        waits = [self._refresh_delay()]
        if self._last_on_demand is not None:
            waits.append(self._last_on_demand + self.settings.min_refresh - time.monotonic())
        return max(1, math.ceil(min(waits)))

    # -- fetching ------------------------------------------------------------------------

    def _refetch_for_token(self) -> None:
        asked_at = time.monotonic()
        with self._fetch_lock:
            if self._attempted_at is not None and self._attempted_at >= asked_at:
                return  # a fetch ended while this one waited for the lock: its answer is the one to use
            now = time.monotonic()
            if self._last_on_demand is not None and now - self._last_on_demand < self.settings.min_refresh:
                return
            self._last_on_demand = now
            self._refresh()

    def refresh(self) -> bool:
        """Fetch the keys now (discovering the JWKS URL first if need be); False when that failed."""
        with self._fetch_lock:
            return self._refresh()

    def _refresh(self) -> bool:
        try:
            url = self._jwks_url or self._discover()
            response = self._fetch(url, self.settings.timeout)
            keys = usable_keys(response.json(), self.settings.algorithms)
        except (requests.RequestException, ValueError) as exc:
            self._failures += 1
            self._last_error = f"{exc.__class__.__name__}: {exc}"
            logger.warning("identity provider %s: could not fetch its keys (%s); %s cached keys kept",
                           self.settings.source, self._last_error, self.cache.count(self._jwks_url))
            return False
        finally:
            self._attempted_at = time.monotonic()
        self.cache.replace(url, keys)
        self._jwks_url = url
        self._max_age = max_age(response.headers.get("Cache-Control"))
        self._fetched_at = self._attempted_at
        self._failures = 0
        self._last_error = None
        logger.info("identity provider %s: %d keys (%s), kept %.0f s", url, len(keys), ", ".join(sorted(keys)),
                    self._max_age)
        return True

    def _discover(self) -> str:
        """The jwks_uri of OIDC_ISSUER's discovery document, which must name that very issuer."""
        issuer = self.settings.oidc_issuer or ""
        document = self._fetch(issuer.rstrip("/") + "/.well-known/openid-configuration", self.settings.timeout).json()
        if not isinstance(document, dict):
            raise ValueError("the discovery document is not a JSON object")
        if document.get("issuer") != issuer:
            raise ValueError(f"the discovery document names the issuer {document.get('issuer')!r}, "
                             f"not OIDC_ISSUER {issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no http(s) jwks_uri")
        return jwks_uri

    def _refresh_delay(self) -> float:
        """Seconds until the background refresh is due: before the max-age runs out, or a retry after a failure."""
        if self._attempted_at is None:
            return 0.0
        if self._failures:
            due = self._attempted_at + min(self.settings.min_refresh, 2.0 ** (self._failures - 1))
        else:
            due = (self._fetched_at or 0.0) + max(MIN_REFRESH_DELAY, REFRESH_AT * self._max_age)
        return max(0.0, due - time.monotonic())

    # -- the background refresh ----------------------------------------------------------

    def start(self) -> None:
        """Fetch the keys now and keep them fresh in a background thread (green under eventlet and gevent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.wait(self._refresh_delay()):
            self.refresh()

    def readiness(self) -> str:
        """'ok' while keys are cached; otherwise why not, naming the provider."""
        count = self.cache.count(self._jwks_url)
        if count:
            return "ok"
        return f"unavailable: no keys from {self.settings.source} ({self._last_error or 'not fetched yet'})"


@functools.lru_cache(maxsize=4096)
def _checked(token: str, key: jwt.PyJWK, settings: Settings) -> Identity:
    # Keyed by the key object too: a key that left the JWKS (a new object, or none) checks
    # nothing more. The expiry is the caller's to check on every use.
    try:
        claims = jwt.decode(token, key, algorithms=list(settings.algorithms), audience=settings.audience,
                            issuer=settings.issuer, leeway=settings.leeway,
                            options={"require": ["exp", "iss", "aud"], "verify_exp": False})
    except jwt.InvalidTokenError as exc:
        raise Refused(f"invalid token: {exc}") from None
    expires = claims["exp"]
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise Refused("invalid token: exp must be a number")
    return Identity(email=_user(claims, settings.user_claim), scopes=_scopes(claims, settings.scope_claim),
                    expires_at=float(expires) + settings.leeway)


def _user(claims: Mapping[str, Any], name: str) -> str:
    """The user the claim `name` names, as a canonical email address."""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise Refused(f"invalid token: no {name!r} claim naming the user (JWT_USER_CLAIM)")
    if name == "email" and claims.get("email_verified") is False:
        raise Refused("invalid token: the identity provider has not verified its email address")
    try:
        return canonical_email(value)
    except ValueError:
        raise Refused(f"invalid token: its {name!r} claim is not an email address") from None


def _scopes(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    """The scopes of the claim `name`: a space-separated string or a list of strings (none when absent)."""
    value = claims.get(name)
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    raise Refused(f"invalid token: its {name!r} claim must be a string or a list of strings (JWT_SCOPE_CLAIM)")
