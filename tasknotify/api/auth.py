"""Who is asking over HTTP: the request's token, its scopes, and the one place where the current reader is known.

The tokens themselves, and the Viewer a token makes, are tasknotify/tokens.py:
a request carries one in `Authorization: Bearer <token>` (SSE may put it in
`?access_token=`). This module also owns the `token create` command and the
app's secret key.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from flask import Flask, current_app, g, request

from tasknotify import jwks
from tasknotify.config import check_identity_provider
from tasknotify.errors import APIError
from tasknotify.tokens import EVERYONE, SCOPES, ProviderUnavailable, TokenError, Viewer, issue_token, viewer_for_token

logger = logging.getLogger("auth")


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
