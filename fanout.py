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
END_CHUNK = b"0\r\n\r\n"  # the end of a chunked body


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
    """The live part of one SSE response: the publisher writes each event straight to the socket.

    A broker reader (`offer`, `close`). While the response's own green thread
    replays the log, offered events wait in a list. Then `go_live` takes the
    connection over from eventlet's WSGI server, whose green thread ends
    without closing it: a live stream costs its socket and this object, and
    no green thread. A hub listener notices the client leaving, `LiveStreams`
    writes heartbeats and ends streams whose token expired, and only a client
    whose socket is full gets a green thread, to write what it has not taken.
    """

    def __init__(self, green_socket: Any, accepts: Callable[[Event], bool] | None, max_pending: int,
                 on_end: Callable[[], None]) -> None:
        self._green = green_socket
        self._raw: socket.socket = green_socket.fd
        self._accepts = accepts
        self._max_pending = max_pending
        self._on_end = on_end  # called once, when a live stream ends
        self._early: list[Event] | None = []  # events offered before go_live(); None once live
        self._pending: deque[bytes] | None = None  # what the socket has not taken yet, in order
        self._drainer: Any = None
        self._listener: Any = None
        self._streams: LiveStreams | None = None
        self.expires_at: float | None = None
        self.next_heartbeat = 0.0
        self.closed_reason: str | None = None

    @property
    def live(self) -> bool:
        return self._streams is not None

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

    def go_live(self, last_id: int, streams: LiveStreams, expires_at: float | None) -> None:
        """Take the connection from eventlet's WSGI server and send the events after last_id from now on.

        Called by the response's green thread when its replay is written; the
        response then ends, and eventlet neither closes the connection nor ends
        the chunked body.
        """
        from eventlet import hubs, wsgi

        # eventlet shuts and closes the connection through these when the response ends.
        self._green.shutdown = self._green.close = _keep_open
        wsgi.WSGI_LOCAL.already_handled = True
        self._green = None
        self.expires_at = expires_at
        self.next_heartbeat = time.time() + streams.heartbeat
        self._streams = streams
        streams.add(self)
        hub = hubs.get_hub()
        self._listener = hub.add(hub.READ, self._raw.fileno(), self._readable, _ignore, _ignore)
        early, self._early = self._early or [], None
        for event in early:
            if event.id > last_id:
                self._send(event.sse_chunk)

    def close(self, reason: str = "closed") -> None:
        """End the stream: gracefully (its body ends) unless the reader fell behind or went away."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if reason in (FELL_BEHIND, GONE) or self._pending:
            # Cut the connection rather than wait on a reader that does not read: it
            # reconnects and resumes from its last event id. Before go_live, the
            # response's green thread, writing the replay, fails at once and ends it.
            _abort(self._raw)
        if self.live:
            from eventlet import spawn_n

            spawn_n(self._end)  # not here: close may be called by a publisher holding locks

    def heartbeat(self, now: float) -> None:
        """Write a heartbeat if it is due, or end the stream if its token expired; called by LiveStreams."""
        if self.expires_at is not None and now >= self.expires_at:
            self.close("token expired")
        elif now >= self.next_heartbeat and self.closed_reason is None:
            self.next_heartbeat = now + self._streams.heartbeat  # type: ignore[union-attr]
            if not self._pending:
                self._send(HEARTBEAT_CHUNK)

    def _send(self, data: bytes) -> None:
        if self._pending is not None:
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
            from eventlet import spawn

            self._pending = deque([data[sent:]])
            self._drainer = spawn(self._drain)

    def _drain(self) -> None:
        """Write what the socket did not take at once, as it takes it (own green thread)."""
        from eventlet.hubs import trampoline

        pending = self._pending
        try:
            while pending and self.closed_reason is None:
                trampoline(self._raw, write=True)
                try:
                    sent = self._raw.send(pending[0])
                except BlockingIOError:
                    continue
                if sent < len(pending[0]):
                    pending[0] = pending[0][sent:]
                else:
                    pending.popleft()
        except OSError:
            self.close(GONE)
        finally:
            self._drainer = None
            if self.closed_reason is None:
                self._pending = None

    def _readable(self, _fileno: int) -> None:
        """The client sent something or left (called by the hub: nothing here may wait)."""
        if self.closed_reason is not None:
            return
        try:
            if self._raw.recv(1024):
                return  # an SSE client has nothing to say; what it sends is dropped
        except BlockingIOError:
            return
        except OSError:
            pass
        self.close(GONE)

    def _end(self) -> None:
        from eventlet import hubs

        if self._drainer is not None:
            self._drainer.kill()
        if self._listener is not None:
            hubs.get_hub().remove(self._listener)
            self._listener = None
        self._streams.discard(self)  # type: ignore[union-attr]
        if self.closed_reason not in (FELL_BEHIND, GONE) and not self._pending:
            try:
                self._raw.send(END_CHUNK)
            except OSError:
                pass
        self._raw.close()
        self._on_end()


class LiveStreams:
    """The SSE streams that went live: one green thread writes their heartbeats and ends expired ones."""

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self._streams: set[SSEWriter] = set()

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, stream: SSEWriter) -> None:
        self._streams.add(stream)

    def discard(self, stream: SSEWriter) -> None:
        self._streams.discard(stream)

    def run(self, stopping: threading.Event) -> None:
        """Until stopping is set: every so often, heartbeats for the streams due one."""
        period = min(1.0, self.heartbeat / 2)
        while not stopping.wait(period):
            now = time.time()
            for count, stream in enumerate(list(self._streams), 1):
                stream.heartbeat(now)
                if count % 256 == 0:
                    time.sleep(0)  # let others run between batches (cooperative under eventlet)

    def close(self) -> None:
        for stream in list(self._streams):
            stream.close()


def _keep_open(*_args: Any) -> None:
    """What eventlet's shutdown and close of a live stream's connection do: nothing."""


def _ignore(*_args: Any) -> None:
    pass


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
