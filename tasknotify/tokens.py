"""Who a token speaks for: the service's own signed tokens, the identity provider's, and the Viewer they make.

The service's own tokens are JWTs signed with HS256 and SECRET_KEY, with the
claims `sub` (the user's email), `scope` (space-separated scopes) and `exp`.
With an identity provider configured (JWT_JWKS_URL or OIDC_ISSUER), a token
whose `iss` is that provider's is checked with the provider's public keys
instead (jwks.py), and every other token as one of the service's own: a token
is never checked with the other kind's keys. A reader sees only the tasks and
events whose user_email is its user, unless it has `admin`. Emails are
compared in their canonical form (ids.canonical_email): a token for
alice@example.com is the user of ALICE@EXAMPLE.COM's tasks.

Nothing here reads a request: the API (api/auth.py) takes tokens from HTTP
headers, the live streams from Socket.IO's `auth`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from flask import current_app

from tasknotify import jwks
from tasknotify.ids import canonical_email

SCOPES = ("tasks:write", "tasks:read", "updates:read", "admin")
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Viewer:
    """A reader: its email in canonical form (None when auth is off), its scopes, and when its token expires."""

    email: str | None
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def only_email(self) -> str | None:
        """The user_email this viewer is limited to, or None when it sees all."""
        return None if self.is_admin else self.email

    def may_see(self, user_email: str) -> bool:
        only = self.only_email
        return only is None or only == user_email

    def has(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes


# The reader when AUTH_DISABLED=1: everyone may do everything.
EVERYONE = Viewer(email=None, scopes=frozenset({"admin"}))


class TokenError(Exception):
    """A token that cannot be accepted: missing, malformed, badly signed or expired."""

    code = "unauthorized"


class ProviderUnavailable(TokenError):
    """A token of the identity provider that cannot be checked: the provider has given no keys (a 503)."""

    code = "unavailable"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def issue_token(secret: str, user: str, scopes: Iterable[str], expires_in: int = 3600) -> str:
    """A token for the email user (stored in `sub` in canonical form); ValueError when user is not an email."""
    now = int(time.time())
    claims = {"sub": canonical_email(user), "scope": " ".join(scopes), "iat": now, "exp": now + expires_in}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def read_token(secret: str, token: str) -> Viewer:
    """The viewer a token speaks for; TokenError when it is not valid now."""
    viewer = _verified(secret, token)
    if viewer.expires_at is not None and viewer.expires_at <= time.time():
        raise TokenError("the token has expired")
    return viewer


@functools.lru_cache(maxsize=4096)
def _verified(secret: str, token: str) -> Viewer:
    # Checking a signature is a tenth of a write's CPU, and clients send the same
    # token again and again: a token is verified once, its expiry on every use.
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"require": ["sub", "exp", "scope"], "verify_exp": False})
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    sub, scope, expires = claims["sub"], claims["scope"], claims["exp"]
    if not isinstance(sub, str) or not sub or not isinstance(scope, str):
        raise TokenError("invalid token: sub and scope must be strings")
    if not isinstance(expires, int | float):
        raise TokenError("invalid token: exp must be a number")
    return Viewer(email=_user(sub), scopes=frozenset(scope.split()), expires_at=float(expires))


def _user(sub: str) -> str:
    """The user a token's sub names: its canonical email, or the sub lowercased when it is no email."""
    try:
        return canonical_email(sub)
    except ValueError:
        # Tokens made before `token create` checked --user: such a reader owns no task
        # (every stored user_email is an email), and an admin one keeps working.
        return sub.lower()


def viewer_for_token(token: str | None) -> Viewer:
    """Authenticate a raw token under the current app's settings; EVERYONE when auth is off."""
    if current_app.config["AUTH_DISABLED"]:
        return EVERYONE
    if not token:
        raise TokenError("a bearer token is required")
    provider: jwks.Provider | None = current_app.extensions.get("identity_provider")
    if provider is None or _unverified_issuer(token) != provider.issuer:
        return read_token(current_app.config["SECRET_KEY"], token)
    try:
        identity = provider.verify(token)
    except jwks.Refused as exc:
        raise TokenError(str(exc)) from None
    except jwks.KeysUnavailable as exc:
        raise ProviderUnavailable(str(exc), exc.retry_after) from None
    if identity.expires_at <= time.time():
        raise TokenError("the token has expired")
    return Viewer(email=identity.email, scopes=identity.scopes, expires_at=identity.expires_at)


@functools.lru_cache(maxsize=4096)
def _unverified_issuer(token: str) -> str | None:
    """The token's `iss`, read without checking anything: it only picks the verifier."""
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        return None
    return issuer if isinstance(issuer, str) else None
