"""Pre-encoded bytes written straight to the sockets of live clients, under eventlet.

An event is encoded once (an SSE chunk, a websocket frame) and the publisher
writes those bytes to each client's socket with one non-blocking send: no
queue, no wake-up of a per-client green thread, no per-client encoding. Only
a client whose socket is full gets a queue, drained by its own green thread;
one that falls too far behind is cut off and resumes by event id.

Anything not served by eventlet's own WSGI server over plain TCP (gevent,
threads, TLS, Socket.IO long-polling) keeps the ordinary, queued path:
`stream_socket()` returns None for it, and `DirectWebSockets` is disabled
or declines (`send()` returns False).
"""

from __future__ import annotations

import _socket
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from broker import Event, http_chunk

FELL_BEHIND = "reader fell behind"
GONE = "client went away"


def _abort(raw: socket.socket) -> None:
    """Shut a connection both ways: whoever waits on it (reader or writer) fails at once."""
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def note_chunked(environ: dict[str, Any], start_response: Any) -> None:
    """Note in environ whether eventlet will send the response chunked (it does for HTTP/1.1 requests).

    eventlet says SERVER_PROTOCOL HTTP/1.0 whatever the request's version; its
    request handler, which start_response closes over, knows the real one.
    """
    for cell in getattr(start_response, "__closure__", None) or ():
        try:
            version = getattr(cell.cell_contents, "request_version", None)
        except ValueError:  # an empty cell
            continue
        if isinstance(version, str):
            environ["fanout.chunked"] = version == "HTTP/1.1"
            return


def stream_socket(environ: dict[str, Any]) -> Any | None:
    """The green socket of a chunked response served by eventlet over plain TCP, else None."""
    stream = environ.get("eventlet.input")
    if stream is None or not environ.get("fanout.chunked") or environ.get("REQUEST_METHOD") != "GET":
        return None
    green = stream.get_socket()
    # The plain TCP socket under eventlet's green one (_socket: monkey-patching replaces
    # socket.socket); not TLS, whose socket cannot take a raw send of its bytes.
    fd = getattr(green, "fd", None)
    return green if isinstance(fd, _socket.socket) and not hasattr(fd, "getpeercert") else None


HEARTBEAT_CHUNK = http_chunk(b": heartbeat\n\n")


def websocket_text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed websocket text frame: the same bytes suit every client."""
    length = len(payload)
    if length <= 125:
        header = struct.pack("!BB", 0x81, length)
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


class SSEWriter:
    """The live part of one SSE response, written by the publisher straight to the socket.

    A broker reader (it has `offer`). Events offered before `run` starts (while
    the response replays the log) wait in a list and are sent by `run` when
    newer than what the replay sent.
    """

    def __init__(self, green_socket: Any, accepts: Callable[[Event], bool] | None, max_pending: int) -> None:
        self._green = green_socket
        self._raw: socket.socket = green_socket.fd
        self._accepts = accepts
        self._max_pending = max_pending
        self._early: list[Event] | None = []  # events offered before run(); None once live
        self._pending: deque[bytes] = deque()  # bytes the socket has not taken yet, in order
        self._writing = False
        self._wake = threading.Event()
        self.closed_reason: str | None = None

    def offer(self, event: Event) -> None:
        """Send an event now, without waiting on the socket; called by the broker."""
        if self.closed_reason is not None or (self._accepts is not None and not self._accepts(event)):
            return
        if self._early is not None:
            self._early.append(event)
            if len(self._early) > self._max_pending:
                self.close(FELL_BEHIND)
        else:
            self._send(event.sse_chunk)

    def close(self, reason: str = "closed") -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            if reason == FELL_BEHIND:
                _abort(self._raw)  # its own green thread may be waiting to write to it: that fails now
            self._wake.set()

    def run(self, last_id: int, heartbeat: float, expires_at: float | None) -> str:
        """Send the live events after last_id until the stream ends; return why it ended."""
        early, self._early = self._early or [], None
        for event in early:
            if event.id > last_id:
                self._send(event.sse_chunk)
        while self.closed_reason is None:
            timeout = heartbeat
            if expires_at is not None:
                timeout = min(heartbeat, expires_at - time.time())
                if timeout <= 0:
                    self.close("token expired")
                    break
            woken = self._wake.wait(timeout)
            self._wake.clear()
            if not woken and not self._pending:
                self._send(HEARTBEAT_CHUNK)
            self._drain()
        if self._pending or self.closed_reason in (FELL_BEHIND, GONE):
            # Cut the connection rather than wait on a reader that does not read: it
            # reconnects and resumes from its last event id.
            self._pending.clear()
            _abort(self._raw)
        return self.closed_reason or "closed"

    def _send(self, data: bytes) -> None:
        if self._pending or self._writing:
            self._pending.append(data)
            if len(self._pending) > self._max_pending:
                self.close(FELL_BEHIND)
            return
        try:
            sent = self._raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(GONE)
            return
        if sent < len(data):
            self._pending.append(data[sent:])
            self._wake.set()

    def _drain(self) -> None:
        """Write what the socket did not take at once, waiting (cooperatively) for it to take it."""
        self._writing = True
        try:
            while self._pending and self.closed_reason is None:
                self._green.sendall(self._pending[0])
                self._pending.popleft()
        except OSError:
            self.close(GONE)
        finally:
            self._writing = False


class DirectWebSockets:
    """Socket.IO websocket connections that can take a pre-encoded frame straight away.

    Engine.IO keeps no reference to a connection's websocket, so the server's
    websocket class is wrapped to note it on the Engine.IO socket while it is open.
    """

    def __init__(self, eio_server: Any) -> None:
        self.eio = eio_server
        base = eio_server._async.get("websocket")
        if base is None or "eventlet" not in base.__module__:
            self.enabled = False
            return
        self.enabled = True

        class NotedWebSocket(base):  # type: ignore[misc, valid-type]
            def __init__(self, handler: Any, server: Any) -> None:
                eio_socket = handler.__self__

                def noted(ws: Any) -> Any:
                    eio_socket.direct_ws = ws
                    try:
                        return handler(ws)
                    finally:
                        eio_socket.direct_ws = None

                super().__init__(noted, server)

        eio_server._async = {**eio_server._async, "websocket": NotedWebSocket}

    def send(self, eio_sid: str, frame: bytes) -> bool:
        """Write frame to the client's websocket if nothing else is queued or being written; False otherwise.

        The caller then queues the packet the ordinary way, behind whatever is ahead of it.
        """
        eio_socket = self.eio.sockets.get(eio_sid)
        ws = getattr(eio_socket, "direct_ws", None)
        if (ws is None or not eio_socket.upgraded or eio_socket.upgrading or eio_socket.closed
                or eio_socket.closing or not eio_socket.queue.empty() or ws._sendlock.locked()):
            return False
        raw = ws.socket.fd
        try:
            sent = raw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            return True  # the connection is going; its reader notices and closes it
        if sent < len(frame):
            # Hold the websocket's send lock until the rest is out, so no other frame cuts in.
            ws._sendlock.acquire()
            self.eio.start_background_task(self._finish, ws, frame[sent:])
        return True

    def cut(self, eio_sid: str) -> None:
        """Close a client that fell behind, transport and all: its Socket.IO client reconnects and resumes."""
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is None:
            return
        ws = getattr(eio_socket, "direct_ws", None)
        eio_socket.close(wait=False, abort=True, reason=self.eio.reason.TRANSPORT_ERROR)
        if ws is not None:
            _abort(ws.socket.fd)

    @staticmethod
    def _finish(ws: Any, rest: bytes) -> None:
        try:
            ws.socket.sendall(rest)
        except OSError:
            pass
        finally:
            ws._sendlock.release()
