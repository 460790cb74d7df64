"""The outermost WSGI layers: every request passes them before Flask's views, Socket.IO and SSE do.

From the outside in:

- Trusted proxies (TRUSTED_PROXIES): werkzeug's ProxyFix takes the client's
  address, the scheme and the host from the X-Forwarded-* headers that the
  proxies in front of the server set. Off by default: a client could set them.
- Allowed hosts (ALLOWED_HOSTS): a request whose Host header names a host the
  server does not serve is refused with 400 `bad_host` before anything else
  reads it. With AUTH_DISABLED this stops DNS rebinding: a web page on another
  name whose DNS answer points at 127.0.0.1 cannot read or write the service.
- Chunked request bodies: read here, up to MAX_CONTENT_LENGTH (413 past it),
  and handed on as a body of known length (werkzeug would read them as empty
  under eventlet, and cut them short at the limit under gevent).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from tasknotify.config import ProxyTrust, as_allowed_hosts, as_trusted_proxies, split_host

logger = logging.getLogger("edge")

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True)
class HostPattern:
    """One ALLOWED_HOSTS entry: a name (empty: any), whether it matches itself and its subdomains, a port."""

    name: str
    itself: bool = True
    subdomains: bool = False
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> HostPattern:
        if entry == "*":
            return cls("", subdomains=True)
        if entry.startswith("*."):
            name, port = split_host(entry[2:])
            return cls(name, itself=False, subdomains=True, port=port)
        if entry.startswith("."):
            name, port = split_host(entry[1:])
            return cls(name, subdomains=True, port=port)
        name, port = split_host(entry)
        return cls(name, port=port)

    def matches(self, name: str, port: int | None) -> bool:
        if self.port is not None and self.port != port:
            return False
        if not self.name:
            return True
        return (self.itself and name == self.name) or (self.subdomains and name.endswith("." + self.name))


def default_allowed_hosts(config: Mapping[str, Any]) -> list[str]:
    """Any host with auth on (tokens protect it); with AUTH_DISABLED, localhost's names and the bound HOST."""
    if not config["AUTH_DISABLED"]:
        return ["*"]
    hosts = list(LOCAL_HOSTS)
    bound = (config.get("HOST") or "").strip().lower()
    if bound not in _ANY_ADDRESS:
        name = f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound
        if name not in hosts:
            hosts.append(name)
    return hosts


class AllowedHosts:
    """WSGI middleware: 400 `bad_host` for a request whose Host header names no allowed host.

    A request without a Host header (HTTP/1.0, not a browser) is served: no web
    page can send one, and a client that can could as well send an allowed name.
    So are the probes that need no token (/healthz, /readyz, /metrics), which
    orchestrators and Prometheus call by the machine's address.
    """

    MAX_REMEMBERED = 1024

    def __init__(self, wsgi_app: Any, allowed: Iterable[str]) -> None:
        self.wsgi_app = wsgi_app
        self.patterns = [HostPattern.parse(entry) for entry in allowed]
        # (Host header, scheme) pairs found allowed: a set look-up instead of matching (7 us) each time.
        self._allowed: set[tuple[str, str]] = set()

    def allows(self, host: str, scheme: str = "http") -> bool:
        try:
            name, port = split_host(host)
        except ValueError:
            return False
        port = port if port is not None else _DEFAULT_PORTS.get(scheme)
        return any(pattern.matches(name, port) for pattern in self.patterns)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        if not host or environ.get("PATH_INFO") in PROBES:
            return self.wsgi_app(environ, start_response)
        key = (host, environ.get("wsgi.url_scheme", "http"))
        if key in self._allowed:
            return self.wsgi_app(environ, start_response)
        if self.allows(*key):
            if len(self._allowed) < self.MAX_REMEMBERED:
                self._allowed.add(key)
            return self.wsgi_app(environ, start_response)
        logger.info("refused a request for host %r (ALLOWED_HOSTS)", host[:255])
        return error_response(start_response, 400, "bad_host",
                              f"this server does not serve the host {host[:255]!r} (ALLOWED_HOSTS)",
                              [{"field": "Host", "message": "not an allowed host"}])


class ChunkedBodies:
    """WSGI middleware: read a chunked request body here, up to MAX_CONTENT_LENGTH, and pass it on with its length.

    werkzeug reads a body of no stated length only when the server sets
    environ["wsgi.input_terminated"] (eventlet's does not, though it decodes
    chunked bodies), and then stops at MAX_CONTENT_LENGTH without saying so:
    an over-long body would be cut short, not refused.
    """

    def __init__(self, wsgi_app: Any, max_length: int) -> None:
        self.wsgi_app = wsgi_app
        self.max_length = max_length

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower() != "chunked" or environ.get("CONTENT_LENGTH"):
            return self.wsgi_app(environ, start_response)
        try:
            body = _read_at_most(environ["wsgi.input"], self.max_length + 1)
        except (OSError, ValueError) as exc:  # the servers' errors for broken chunk framing
            return error_response(start_response, 400, "bad_request", f"the chunked body does not decode: {exc}")
        if len(body) > self.max_length:
            return error_response(start_response, 413, "payload_too_large",
                                  f"the body is over {self.max_length} bytes (MAX_CONTENT_LENGTH)")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        del environ["HTTP_TRANSFER_ENCODING"]  # what follows reads a body of known length
        return self.wsgi_app(environ, start_response)


def _read_at_most(stream: Any, limit: int) -> bytes:
    parts, size = [], 0
    while size < limit:
        part = stream.read(min(limit - size, 65536))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def error_response(start_response: Any, status: int, code: str, message: str,
                   details: list[dict[str, str]] | None = None) -> list[bytes]:
    """The API's error shape, from outside Flask; the connection is closed after it."""
    body = json.dumps({"error": {"code": code, "message": message, "details": details or []}}).encode()
    start_response(f"{status} {HTTPStatus(status).phrase.upper()}", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]


def _allowed_hosts(config: Mapping[str, Any]) -> list[str]:
    """ALLOWED_HOSTS (or its default), and the host of PUBLIC_URL: the name mail providers post unsubscribes to."""
    allowed = config.get("ALLOWED_HOSTS")
    if isinstance(allowed, str):
        allowed = as_allowed_hosts(allowed)
    if allowed is None:
        allowed = default_allowed_hosts(config)
        if config["AUTH_DISABLED"] and (config.get("HOST") or "").strip() in _ANY_ADDRESS:
            logger.warning("AUTH_DISABLED=1: only requests for %s are served; set ALLOWED_HOSTS to reach this "
                           "server by another name", ", ".join(allowed))
    allowed = list(allowed)
    public = urlsplit(config.get("PUBLIC_URL") or "").netloc.lower()
    if public and public not in allowed:
        allowed.append(public)
    return allowed


def _proxy_trust(config: Mapping[str, Any]) -> ProxyTrust:
    trust = config.get("TRUSTED_PROXIES") or ProxyTrust()
    return trust if isinstance(trust, ProxyTrust) else as_trusted_proxies(str(trust))


def init_app(app: Flask) -> None:
    """Wrap the whole app (Socket.IO and SSE included) in the layers above; call it last."""
    wsgi_app: Any = ChunkedBodies(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    allowed = _allowed_hosts(app.config)
    if "*" not in allowed:
        wsgi_app = AllowedHosts(wsgi_app, allowed)
    trust = _proxy_trust(app.config)
    if trust != ProxyTrust():
        # Outermost, so that the host checked is the one the client asked the proxy for.
        wsgi_app = ProxyFix(wsgi_app, x_for=trust.x_for, x_proto=trust.x_proto, x_host=trust.x_host,
                            x_port=0, x_prefix=0)
    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
