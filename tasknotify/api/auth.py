"""Who is asking: signed tokens, scopes, and the one place where the current reader is known.

The service's own tokens are JWTs signed with HS256 and SECRET_KEY, with the
claims `sub` (the user's email), `scope` (space-separated scopes) and `exp`.
With an identity provider configured (JWT_JWKS_URL or OIDC_ISSUER), a token
whose `iss` is that provider's is checked with the provider's public keys
instead (jwks.py), and every other token as one of the service's own: a token
is never checked with the other kind's keys. A reader sees only the tasks and
events whose user_email is its user, unless it has `admin`. Emails are
compared in their canonical form (schemas.canonical_email): a token for
alice@example.com is the user of ALICE@EXAMPLE.COM's tasks.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import click
import jwt
from flask import Flask, current_app, g, request

from tasknotify.api import jwks
from tasknotify.api.schemas import canonical_email
from tasknotify.config import check_identity_provider
from tasknotify.errors import APIError

logger = logging.getLogger("auth")

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


def _request_token(allow_query: bool) -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        kind, _, value = header.partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise TokenError("the Authorization header must be 'Bearer <token>'")
        return value.strip()
    if allow_query:
        return request.args.get("access_token") or None
    return None


def authenticate(scope: str | None, *, allow_query_token: bool = False) -> Viewer:
    """The request's viewer, which must hold scope (None: any valid token will do): APIError 401 without a valid
    token, 403 without the scope."""
    try:
        viewer = viewer_for_token(_request_token(allow_query_token))
    except ProviderUnavailable as exc:
        raise APIError(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    except TokenError as exc:
        raise APIError(401, str(exc), headers={"WWW-Authenticate": 'Bearer realm="tasks"'}) from None
    if scope is not None and not viewer.has(scope):
        raise APIError(403, f"the token lacks the scope {scope!r}")
    g.viewer = viewer
    return viewer


F = TypeVar("F", bound=Callable[..., Any])


def requires(scope: str | None, *, allow_query_token: bool = False) -> Callable[[F], F]:
    """A view decorator: authenticate the request and require scope (None: any) before the view runs."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authenticate(scope, allow_query_token=allow_query_token)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def current_viewer() -> Viewer:
    """The viewer of the current request or Socket.IO connection (set by authenticate)."""
    return g.get("viewer", EVERYONE if current_app.config["AUTH_DISABLED"] else Viewer(email=None))


def rate_limit_caller() -> tuple[str, bool]:
    """Whom a write limit counts (the token's user, else the client address), and whether it is a service.

    A service is an `admin` token: a backend that writes every user's tasks, limited
    by RATE_LIMIT_SERVICE_WRITES rather than a user's RATE_LIMIT_WRITES.
    """
    # The limit is checked before the view authenticates, so read the token here.
    try:
        viewer = g.get("viewer") or viewer_for_token(_request_token(allow_query=False))
    except TokenError:
        viewer = None
    if viewer is not None and viewer.email:
        return f"user:{viewer.email}", viewer.is_admin
    return f"addr:{request.remote_addr}", False


def ensure_secret_key(app: Flask) -> None:
    """Use SECRET_KEY, or a random key kept in the instance folder (created with mode 0600 on first use)."""
    if app.config.get("SECRET_KEY"):
        return
    path = os.path.join(app.instance_path, "secret_key")
    try:
        with open(path) as file:
            app.config["SECRET_KEY"] = file.read().strip()
        return
    except FileNotFoundError:
        pass
    os.makedirs(app.instance_path, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key)
    app.config["SECRET_KEY"] = key
    logger.warning("SECRET_KEY is not set: created a random one in %s (mode 0600); set SECRET_KEY to share "
                   "tokens between machines", path)


@click.group("token", help="The service's own signed access tokens (HS256, SECRET_KEY): for machine clients such as "
                           "curl and backend jobs, and for users when no identity provider is configured.")
def token_cli() -> None:
    pass


@token_cli.command("create")
@click.option("--user", required=True, help="The user's email: the token's sub (lowercased).")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES),
              help="A scope to grant; repeat for several.")
@click.option("--expires-in", default=3600, show_default=True, type=click.IntRange(min=1),
              help="Lifetime in seconds.")
def create_token(user: str, scopes: tuple[str, ...], expires_in: int) -> None:
    """Print a token for USER (an email, kept in canonical form) with the given scopes, and nothing else."""
    try:
        token = issue_token(current_app.config["SECRET_KEY"], user, scopes, expires_in)
    except ValueError as exc:
        raise click.ClickException(f"--user {user!r}: {exc}") from None
    click.echo(token)


def init_app(app: Flask) -> None:
    """Tokens for app: its secret key, its identity provider (when configured), the `token` command."""
    ensure_secret_key(app)
    check_identity_provider(app.config)
    settings = jwks.Settings.from_config(app.config)
    if settings is not None:
        app.extensions["identity_provider"] = jwks.Provider(settings)
        logger.info("tokens of the identity provider %s (keys from %s) are accepted beside the service's own",
                    settings.issuer, settings.source)
    if app.config["AUTH_DISABLED"]:
        logger.warning("AUTH_DISABLED=1: authentication is OFF; anyone who can reach this server may read and "
                       "write every task. For local demos only.")
    app.cli.add_command(token_cli)


def start(app: Flask) -> None:
    """Fetch the identity provider's keys and keep them fresh in the background (when one is configured)."""
    provider: jwks.Provider | None = app.extensions.get("identity_provider")
    if provider is not None:
        provider.start()


def stop(app: Flask) -> None:
    provider: jwks.Provider | None = app.extensions.get("identity_provider")
    if provider is not None:
        provider.stop()
