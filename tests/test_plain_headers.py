"""httpserver.PlainHeaders: a plain head's header lines parsed without the email package, exactly as the stdlib does.

Each head goes through BaseHTTPRequestHandler.parse_request twice, once as the stdlib
has it and once with PlainHeaders in front, on handlers that are not attached to a
socket; everything the server reads afterwards must be the same: the result, the
request line's parts, the headers (names, values, order), whether the connection
closes, what was answered (an error, a 100 Continue) and what is left to read.
The live server's refusals of the same heads are in test_http_server.py.
"""

from __future__ import annotations

import io
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tasknotify.live.takeover.httpserver import PlainHeaders

BODY = b"the body, not to be read as headers\r\n"


class Stdlib(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


class Plain(PlainHeaders, Stdlib):
    pass


def parsed(cls: type[BaseHTTPRequestHandler], head: bytes) -> dict[str, Any]:
    request_line, _, rest = head.partition(b"\n")
    handler = cls.__new__(cls)
    handler.raw_requestline = request_line + b"\n"
    handler.rfile = io.BytesIO(rest + BODY)
    handler.wfile = io.BytesIO()
    handler.client_address = ("127.0.0.1", 1)
    handler.request_version = handler.default_request_version
    handler.command = None
    ok = handler.parse_request()
    headers = getattr(handler, "headers", None)
    return {
        "ok": ok, "command": handler.command, "path": getattr(handler, "path", None),
        "version": handler.request_version, "close": handler.close_connection,
        "headers": None if headers is None else list(headers.items()),
        "get_all": None if headers is None else {name: headers.get_all(name) for name in headers.keys()},
        "answered": handler.wfile.getvalue().split(b"\r\n", 1)[0], "left": handler.rfile.read(),
    }


def head(*lines: str | bytes, request: bytes = b"GET /task_updates?x=1 HTTP/1.1") -> bytes:
    encoded = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    return b"\r\n".join([request, *encoded, b"", b""])


HEADS = {
    "browser": head("Host: 127.0.0.1:5000", "User-Agent: Mozilla/5.0 (X11)", "Accept: text/event-stream",
                    "Last-Event-ID: 42", "Cookie: a=1; b=2"),
    "websocket": head("Host: h", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", request=b"GET /socket.io/?EIO=4 HTTP/1.1"),
    "no headers": head(),
    "connection close": head("Host: h", "Connection: close"),
    "connection keep-alive, HTTP/1.0": head("Connection: keep-alive", request=b"GET / HTTP/1.0"),
    "HTTP/1.0": head("Host: h", request=b"GET / HTTP/1.0"),
    "expect 100-continue": head("Host: h", "Expect: 100-continue", "Content-Length: 5",
                                request=b"POST /update_task HTTP/1.1"),
    "expect on HTTP/1.0": head("Expect: 100-continue", request=b"POST / HTTP/1.0"),
    "repeated header": head("X-A: 1", "X-A: 2", "x-a: 3"),
    "empty value": head("X-Empty:", "X-Blank:   "),
    "blanks around a value": head("X-A: \t value with blanks \t "),
    "no space after the colon": head("X-A:value"),
    "bare LF line ends": b"GET / HTTP/1.1\nHost: h\nX-A: b\n\n",
    "latin-1 bytes": head(b"X-Name: caf\xe9 \xff"),
    "colon in the value": head("Host: example.com:8080", "X-T: a:b:c"),
    "folded continuation line": head("X-A: first", " second", "Host: h"),
    "tab continuation": head("X-A: first", "\tsecond"),
    "line without a colon": head("Host: h", "not a header", "X-After: 1"),
    "space before the colon": head("Host : h"),
    "empty name": head(": value"),
    "unix From line": head("From nobody Mon Jan  1 00:00:00 2000", "Host: h"),
    "bare CR inside a value": head(b"X-A: a\rb", "Host: h"),
    "NUL in a value": head(b"X-A: a\x00b"),
    "non-token name": head(b"X(A): 1", "Host: h"),
    "99 headers": head(*(f"X-{n}: {n}" for n in range(99))),
    "100 headers": head(*(f"X-{n}: {n}" for n in range(100))),
    "101 headers": head(*(f"X-{n}: {n}" for n in range(101))),
    "headers cut short": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n",
    "HTTP/2.0": head("Host: h", request=b"GET / HTTP/2.0"),
    "HTTP/0.9": b"GET /\r\n",
    "bad version": head("Host: h", request=b"GET / HTTP/1.x"),
    "four words": head("Host: h", request=b"GET / x HTTP/1.1"),
    "non-ASCII blank in the request line": head("Host: h", request=b"GET /\xa0x HTTP/1.1"),
    "double slash path": head("Host: h", request=b"GET //evil.example/ HTTP/1.1"),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_a_head_parses_as_the_stdlib_parses_it(name: str) -> None:
    assert parsed(Plain, HEADS[name]) == parsed(Stdlib, HEADS[name])


def test_a_plain_head_skips_the_email_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of PlainHeaders: the stdlib's parser sees only the empty block that ends the head."""
    import http.client

    seen: list[int] = []
    real = http.client.parse_headers

    def counting(fp: Any, _class: Any = http.client.HTTPMessage) -> Any:
        message = real(fp, _class=_class)
        seen.append(len(message))
        return message

    monkeypatch.setattr(http.client, "parse_headers", counting)
    assert parsed(Plain, HEADS["browser"])["ok"]
    assert seen == [0]
    assert parsed(Plain, HEADS["folded continuation line"])["ok"]
    assert seen == [0, 2]  # not plain: the stdlib parsed it whole
