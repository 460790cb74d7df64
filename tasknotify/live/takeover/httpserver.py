"""The HTTP server of `python app.py`: eventlet's or gevent's, guarded against hostile clients.

Each server's request handler is subclassed here so that

- a request's head (request line and headers) arrives within `header_timeout` seconds
  of the connection or, on a kept-alive connection, of the request's first byte; past
  that the connection is closed, with a 408 answer when part of a request had come;
- a kept-alive connection waits at most `keepalive_idle` seconds for its next request;
- every answer the server writes itself, before the app sees the request (request line
  too long, headers too long or too many, a malformed request line, a Content-Length
  that cannot be trusted, under gevent a broken websocket handshake or an error escaping
  the app), has the service's JSON error shape.

A plain head (HTTP/1.0 or 1.1, every header line `name: value`) has its header lines
parsed here, into the stdlib's own message class, rather than by the `email` package's
parser the stdlib uses, which was a tenth of the CPU of a Socket.IO handshake; any
other head goes to the stdlib's parser as it came (PlainHeaders).

No limit applies once the head has arrived: responses, SSE streams, websockets and
long polls last as long as they need (nor is a slow request body bounded here).

This module is the one place that reaches into the servers' internals (eventlet 0.41,
gevent 26 with gevent-websocket 0.10). fences.py checks each of them at start (the parts
http-guards and lean-buffers); without them the server runs its library's plain handler
(`guards=False`: no deadlines, logged as an ERROR) or eventlet's buffer sizes (`lean_buffers=False`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import socket
from collections import deque
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from typing import Any

logger = logging.getLogger("httpserver")

# The limits of eventlet's own parser (gevent's are looser), applied under both servers.
MAX_REQUEST_LINE = 8192  # bytes, with its line end
MAX_HEADER_LINE = 8192
MAX_HEADER_BYTES = 65536
MAX_HEADERS = 100

CODES = {
    400: "bad_request",
    408: "request_timeout",
    414: "uri_too_long",
    426: "upgrade_required",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    505: "http_version_not_supported",
}
MESSAGES = {
    400: "malformed request",
    408: "the request's headers did not arrive in time",
    414: f"request line longer than {MAX_REQUEST_LINE} bytes",
    431: f"request headers too large (at most {MAX_HEADERS} lines of {MAX_HEADER_LINE} bytes, "
         f"{MAX_HEADER_BYTES} bytes in all)",
    500: "internal server error",
}

@dataclass(frozen=True)
class Limits:
    header_timeout: float  # seconds for a request's head
    keepalive_idle: float  # seconds a kept-alive connection waits for its next request


class Refusal(ValueError):
    """A request the server answers itself, before the app: a status, its stable code and a message.

    A ValueError, which is how gevent's server takes a client's mistake (logged without a traceback).
    """

    def __init__(self, status: int, message: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.message = message or MESSAGES.get(status) or HTTPStatus(status).phrase
        self.headers = headers
        super().__init__(self.message)

    @property
    def code(self) -> str:
        return CODES.get(self.status, "error")

    def body(self) -> bytes:
        return json.dumps({"error": {"code": self.code, "message": self.message, "details": []}}).encode()

    def wsgi(self) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status line, headers and body, for a WSGI start_response; the connection closes after it."""
        body = self.body()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close"),
                   *self.headers]
        return f"{self.status} {HTTPStatus(self.status).phrase}", headers, body

    def http(self, head_only: bool = False) -> bytes:
        """The whole HTTP/1.1 response (without its body, for a HEAD request)."""
        status, headers, body = self.wsgi()
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        return f"HTTP/1.1 {status}\r\n{head}\r\n".encode("latin-1") + (b"" if head_only else body)


def check_framing(headers: Message) -> Refusal | None:
    """Refuse a body length that a proxy in front might read differently (a request smuggled past it)."""
    codings = headers.get_all("Transfer-Encoding") or []
    if codings and (len(codings) > 1 or codings[0].strip().lower() != "chunked"):
        # The servers read any other coding as "no body", and what follows as the next request.
        return Refusal(501, "the only transfer coding served is a single 'chunked'")
    lengths = headers.get_all("Content-Length") or []
    if lengths:
        value = lengths[0].strip()
        if len(lengths) > 1 or not (value.isascii() and value.isdigit()):
            return Refusal(400, "Content-Length must be given once, as a decimal number")
        if "Transfer-Encoding" in headers:
            return Refusal(400, "Content-Length and Transfer-Encoding must not come together")
    return None


def websocket_refusal(environ: dict[str, Any], request_version: str, versions: tuple[str, ...]) -> Refusal | None:
    """What is wrong with a websocket handshake (None: nothing, or not a handshake at all)."""
    if (environ.get("REQUEST_METHOD") != "GET" or environ.get("HTTP_UPGRADE", "").lower() != "websocket"
            or "upgrade" not in environ.get("HTTP_CONNECTION", "").lower()):
        return None
    if request_version != "HTTP/1.1":
        return Refusal(400, "a websocket handshake needs HTTP/1.1")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") not in versions:
        supported = ", ".join(versions)
        return Refusal(426, f"websocket version must be one of {supported}", (("Sec-WebSocket-Version", supported),))
    try:
        valid = len(base64.b64decode(environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip(), validate=True)) == 16
    except binascii.Error:
        valid = False
    return None if valid else Refusal(400, "Sec-WebSocket-Key must be 16 bytes in base64")


class _LimitedHead:
    """A reader of a request's header lines that refuses one too long, too many, or too many bytes in all."""

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self._bytes = 0
        self._lines = 0

    def readline(self, _limit: int = -1) -> bytes:
        line = self._rfile.readline(MAX_HEADER_LINE)
        self._bytes += len(line)
        if line not in (b"\r\n", b"\n", b""):
            self._lines += 1
        if len(line) >= MAX_HEADER_LINE or self._bytes > MAX_HEADER_BYTES or self._lines > MAX_HEADERS:
            raise Refusal(431)
        return line


# A header line as the stdlib's parser reads it without surprises: a token, a colon, a value without CR.
_PLAIN_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([^\r\n]*)\r?\n")
_HEAD_END = (b"\r\n", b"\n", b"")
_STDLIB_MAX_LINES = 100  # http.client reads at most this many lines, the blank one included


def plain_headers(lines: list[bytes], message_class: type[Message]) -> Message | None:
    """The header lines as http.client.parse_headers gives them, when each is a plain `name: value`; else None."""
    message = message_class()
    for line in lines:
        match = _PLAIN_HEADER.fullmatch(line)
        if match is None:
            return None
        # The value as the email parser's compat32 policy keeps it: leading blanks off, trailing ones kept.
        message[match[1].decode("latin-1")] = match[2].decode("latin-1").lstrip(" \t")
    return message


class _Replayed:
    """A reader of header lines that gives back the lines already read, then reads on."""

    def __init__(self, lines: list[bytes], rfile: Any) -> None:
        self._lines = deque(lines)
        self._rfile = rfile

    def readline(self, size: int = -1) -> bytes:
        return self._lines.popleft() if self._lines else self._rfile.readline(size)


class PlainHeaders:
    """BaseHTTPRequestHandler.parse_request, with a plain head's header lines parsed by plain_headers.

    The request line, its refusals and everything else stay the stdlib's: it parses the request
    with an empty header block, and what it decides from the headers (Connection, Expect) is
    decided here in the same way. A head that is not plain is given to it whole.
    """

    raw_requestline: bytes
    rfile: Any
    headers: Message
    close_connection: bool
    protocol_version: str
    request_version: str
    MessageClass: type[Message]

    def parse_request(self) -> bool:
        words = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n").split()  # as the stdlib splits it
        if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return super().parse_request()  # type: ignore[misc]
        rfile, lines = self.rfile, []
        while True:
            line = rfile.readline(65537)
            lines.append(line)
            if line in _HEAD_END or len(lines) > _STDLIB_MAX_LINES:
                break
        headers = None
        if len(lines) <= _STDLIB_MAX_LINES and lines[-1] in _HEAD_END:
            headers = plain_headers(lines[:-1], self.MessageClass)
        self.rfile = _Replayed(lines if headers is None else [b"\r\n"], rfile)
        try:
            if not super().parse_request():  # type: ignore[misc]
                return False
        finally:
            self.rfile = rfile
        if headers is None:
            return True
        self.headers = headers
        connection = headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        if (headers.get("Expect", "").lower() == "100-continue" and self.protocol_version >= "HTTP/1.1"
                and self.request_version >= "HTTP/1.1"):
            return bool(self.handle_expect_100())  # type: ignore[attr-defined]
        return True


class _HeadDeadline:
    """The wait for a request's head, bounded; mixed into each server's request handler.

    The first request of a connection has header_timeout from the connection for its
    whole head; a later one has keepalive_idle to begin, then header_timeout for the rest.
    The deadline is lifted when the head is parsed (handle_one_response).
    """

    header_timeout = 10.0
    keepalive_idle = 75.0
    _served = 0  # requests begun on this connection
    _deadline: Any = None
    rfile: Any

    @staticmethod
    def _start_timer(seconds: float) -> Any:
        """A started green Timeout of the server's library."""
        raise NotImplementedError

    def _await_head(self) -> bool:
        """Wait for the next request's first byte: False when the client left or sent nothing in time."""
        if self.rfile.closed:
            return False
        first = not self._served
        timer = self._start_timer(self.header_timeout if first else self.keepalive_idle)
        try:
            arrived = bool(self.rfile.peek(1))
        except BaseException as exc:
            timer.cancel()
            if isinstance(exc, OSError) or exc is timer:  # reset by the client, or nothing came in time
                return False
            raise
        if not arrived:
            timer.cancel()
            return False
        self._served += 1
        if first:
            self._deadline = timer  # the same deadline goes on for the rest of the head
        else:
            timer.cancel()
            self._deadline = self._start_timer(self.header_timeout)
        return True

    def _timed_out(self, exc: BaseException) -> bool:
        return exc is self._deadline

    def _log_refusal(self, refusal: Refusal, client: Any) -> None:
        logger.info("refused a request from %s: %s %s", client, refusal.status, refusal.message)


def eventlet_protocol(limits: Limits, guards: bool = True, lean_buffers: bool = True) -> type:
    """eventlet's HTTP handler, guarded, with 1 KiB buffers instead of 8 + 16 KiB (most of an idle stream's memory).

    Requests and answers of the API are small; larger bodies bypass the buffers.
    Without guards, eventlet's own handler; without lean_buffers, its buffer sizes.
    """
    import eventlet
    from eventlet import wsgi

    base: type = wsgi.HttpProtocol
    if lean_buffers:
        class LeanHttpProtocol(wsgi.HttpProtocol):
            rbufsize = 1024
            wbufsize = 1024

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    # The last request's environ holds a closure over this handler (eventlet.set_idle):
                    # without it, a finished connection's objects are freed at once, not by a later
                    # garbage collection (see heap.py).
                    self.environ = None

        base = LeanHttpProtocol
    if not guards:
        return base

    class GuardedHttpProtocol(_HeadDeadline, PlainHeaders, base):  # type: ignore[misc, valid-type]
        header_timeout = limits.header_timeout
        keepalive_idle = limits.keepalive_idle
        _start_timer = staticmethod(eventlet.Timeout)

        def handle_one_request(self) -> None:
            if not self._await_head():
                self.close_connection = 1
                return
            try:
                super().handle_one_request()
            except eventlet.Timeout as exc:
                if not self._timed_out(exc):
                    raise
                self._refuse(Refusal(408))
            finally:
                self._deadline.cancel()

        def handle_one_response(self) -> None:
            self._deadline.cancel()  # the head is in: the app takes the time it needs
            super().handle_one_response()

        def _read_request_line(self) -> bytes | str:
            line = super()._read_request_line()
            if len(line) >= self.server.url_length_limit:
                self._refuse(Refusal(414))
                return b""  # handle_one_request ends the connection
            return line

        def parse_request(self) -> bool:
            try:
                if not super().parse_request():
                    return False
            except (wsgi.HeaderLineTooLong, wsgi.HeadersTooLarge):
                self._refuse(Refusal(431))
                return False
            refusal = check_framing(self.headers)
            if refusal is not None:
                self._refuse(refusal)
                return False
            return True

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """The stdlib's error answer (malformed request line, too many headers), as JSON."""
            self._refuse(Refusal(int(code), f"{message}: {explain}" if message and explain else message))

        def _refuse(self, refusal: Refusal) -> None:
            self.close_connection = 1
            self._log_refusal(refusal, self.client_address)
            try:
                self.wfile.write(refusal.http(head_only=getattr(self, "command", None) == "HEAD"))
                self.wfile.flush()
            except OSError:
                pass  # the client is gone

    return GuardedHttpProtocol


def gevent_handler(limits: Limits, guards: bool = True) -> type:
    """gevent's HTTP handler (gevent-websocket's, as Flask-SocketIO uses when installed), guarded unless not guards.

    Either way each request's environ offers the take-over (fanout.GeventHandover) of an SSE
    response at its end or of an open Socket.IO websocket, which the stream hub uses only when
    the self-check allows it.
    """
    import gevent
    from gevent import pywsgi

    from tasknotify.live.takeover.fanout import GeventHandover

    try:
        from geventwebsocket.handler import WebSocketHandler as plain
    except ImportError:
        plain = pywsgi.WSGIHandler

    class HandingOverHandler(plain):  # type: ignore[misc, valid-type]
        def handle(self) -> None:
            # gevent writes a response's head and its body in two sends: with Nagle's algorithm on, the
            # body waited for the client's delayed ACK of the head, 40 ms on every kept-alive request.
            # Node's HTTP server sets TCP_NODELAY too.
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not a TCP socket (a Unix one): no Nagle to turn off
            super().handle()

        def get_environ(self) -> dict[str, Any]:
            environ = super().get_environ()
            environ[GeventHandover.KEY] = GeventHandover(self)
            return environ

        def handle_one_response(self) -> None:
            try:
                super().handle_one_response()
            finally:
                # The environ and the handler would hold each other (a cycle that only a garbage collection
                # frees), and copies of the environ would hold the handler.
                handover = self.environ.pop(GeventHandover.KEY, None)
                if handover is not None:
                    handover.release()

    base = HandingOverHandler
    if not guards:
        return base

    class GuardedHandler(_HeadDeadline, base):  # type: ignore[misc, valid-type]
        header_timeout = limits.header_timeout
        keepalive_idle = limits.keepalive_idle
        _start_timer = staticmethod(gevent.Timeout.start_new)
        _refusal: Refusal | None = None

        def handle_one_request(self) -> Any:
            if not self._await_head():
                return None
            self._refusal = None
            try:
                result = super().handle_one_request()
            except gevent.Timeout as exc:
                if not self._timed_out(exc):
                    raise
                return self._refuse(Refusal(408))
            finally:
                self._deadline.cancel()
            if isinstance(result, tuple):  # gevent's own answer to a bad request: (status, response)
                # gevent has logged the requests read_request refused; not the others (414).
                return self._refuse(self._refusal or Refusal(int(result[0])), log=self._refusal is None)
            return result

        def handle_one_response(self) -> None:
            self._deadline.cancel()  # the head is in: the app takes the time it needs
            super().handle_one_response()

        def read_request(self, raw_requestline: str) -> bool:
            try:
                version = re.fullmatch(r"HTTP/(\d+)\.(\d+)", (raw_requestline.split() or [""])[-1])
                if version and int(version[1]) >= 2:
                    raise Refusal(505, f"HTTP version {version[1]}.{version[2]} is not supported")
                return super().read_request(raw_requestline)
            except ValueError as exc:  # how gevent refuses a request: its handle_one_request answers 400
                message = getattr(exc, "formatted_message", None)  # gevent's own; not that of a failed int()
                self._refusal = exc if isinstance(exc, Refusal) else Refusal(400, message)
                raise

        def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - gevent's name
            headers = super().MessageClass(_LimitedHead(fp), *args)
            refusal = check_framing(headers)
            if refusal is not None:
                raise refusal
            return headers

        def upgrade_websocket(self) -> Any:
            refusal = websocket_refusal(self.environ, self.request_version, getattr(self, "SUPPORTED_VERSIONS", ()))
            if refusal is None:
                return super().upgrade_websocket()
            self._log_refusal(refusal, self.client_address)
            status, headers, body = refusal.wsgi()
            self.start_response(status, headers)
            return [body]

        def _send_error_response_if_possible(self, error_code: int) -> None:
            if self.response_length:
                self.close_connection = True
                return
            status, headers, body = Refusal(error_code).wsgi()
            try:
                self.start_response(status, headers)
                self.write(body)
            except OSError:
                self.close_connection = True

        def _refuse(self, refusal: Refusal, log: bool = True) -> tuple[str, bytes]:
            if log:
                self._log_refusal(refusal, self.client_address)
            return str(refusal.status), refusal.http(head_only=self.command == "HEAD")

    return GuardedHandler


def listen_backlog(wanted: int = 0) -> int:
    """The listening socket's queue of connections not yet accepted: wanted, or with 0 the system's maximum.

    A burst of clients (every browser reconnecting after a restart) overflows a short queue; the
    kernel then drops their SYNs and each waits out TCP's retransmission timer (1, 3, 7 s ...).
    The kernel caps the queue at net.core.somaxconn whatever is asked.
    """
    if wanted:
        return wanted
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            return int(limit.read())
    except (OSError, ValueError):  # not Linux
        import socket

        return socket.SOMAXCONN


def listen(host: str, port: int, backlog: int = 0) -> Any:
    """The server's listening socket, bound and listening (a green one: the process is patched).

    SO_REUSEADDR lets a restarted server bind while the old one's connections linger
    in TIME_WAIT. Never SO_REUSEPORT, which eventlet.listen sets by default: with it
    a second server started on the same port would share its connections at random,
    each process with its own in-process broker, instead of failing to start.
    OSError when the address is taken. backlog: see listen_backlog.
    """
    import socket

    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(listen_backlog(backlog))
    except OSError:
        listener.close()
        raise
    return listener


def serve(app: Any, listener: Any, mode: str, *, max_connections: int, limits: Limits, guards: bool = True,
          lean_buffers: bool = True) -> None:
    """Serve the WSGI app on listener (see listen) with eventlet's or gevent's server, guarded, until the process
    stops.

    guards and lean_buffers off: the fallbacks of the self-check (fences.py).
    """
    if mode == "eventlet":
        # As Flask-SocketIO's run() does, with the guarded protocol and no traceback in a 500's body.
        from eventlet import wsgi

        wsgi.server(listener, app, max_size=max_connections, protocol=eventlet_protocol(limits, guards, lean_buffers),
                    log_output=False, debug=False)
    elif mode == "gevent":
        # As Flask-SocketIO's run() does, with the guarded handler.
        from gevent import pywsgi

        pywsgi.WSGIServer(listener, app, handler_class=gevent_handler(limits, guards), log=None).serve_forever()
    else:
        raise ValueError(f"no guarded server for {mode!r}")
