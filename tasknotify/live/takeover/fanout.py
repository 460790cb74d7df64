"""Live client connections under eventlet or gevent: pre-encoded bytes written straight to their sockets.

An event is encoded once (an SSE chunk, a websocket frame) and the publisher
writes those bytes to each client's socket with one non-blocking send: no
queue, no wake-up of a per-client green thread, no per-client encoding.

Once a stream is set up (an SSE response has replayed what the client
missed; a Socket.IO websocket is open), its connection is taken over from
eventlet's WSGI server, whose green thread then ends without closing it. A
live connection costs its socket and one small object: a hub listener
notices what the client sends or that it left, one green thread writes the
heartbeats and pings of all of them, and only a client whose socket is full
gets a green thread of its own, to write what it has not taken. One that
falls too far behind is cut off and resumes by event id.

Under gevent, SSE responses and Socket.IO websockets served by the server's
own handler (httpserver.gevent_handler, which puts a `GeventHandover` in each
request's environ) are taken over the same way: a websocket from
gevent-websocket, which then writes and closes nothing on it, with what its
reader read ahead. The protocol logic here is shared, only the event-loop
primitives (`EventletLoop`, `GeventLoop`) and the websocket being finished
(`_EventletWebSocket`, `_GeventWebSocket`) differ.

Anything else (threads, TLS, Socket.IO long-polling, gunicorn's workers) keeps
the ordinary, queued path: `stream_socket()` returns None for it, and
`LiveWebSockets` is disabled or declines (`send()` returns False).

This module holds the service's reaches into eventlet's, gevent's and
gevent-websocket's and python-engineio's internals (also `close_on_malformed_packets`, under every
server); fences.py checks them at start (the parts takeover and
gevent-takeover), and `DIRECT_WRITES=0` is the path they fall back to.
"""

from __future__ import annotations

import _socket
import functools
import heapq
import io
import itertools
import logging
import random
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed

from tasknotify.events import Event, http_chunk
from tasknotify.live.broker import EndReason

logger = logging.getLogger("fanout")

# A connection cut rather than closed gracefully: a reader that does not read, or a client that left.
CUT = (EndReason.FELL_BEHIND, EndReason.GONE)

HEARTBEAT_CHUNK = http_chunk(b": heartbeat\n\n")
END_CHUNK = b"0\r\n\r\n"  # the end of a chunked body
WEBSOCKET_CLOSE = b"\x88\x00"  # a close frame without a status
ENGINEIO_PONG = "3"  # the whole of an Engine.IO pong message (a text frame: wsproto gives its text)
PING_TICK_SECONDS = 0.1  # pings go out in small groups this often, not all the second's at once
CLOSING_HANDSHAKE_SECONDS = 2.0  # how long a websocket we close waits for the client's close frame
_EMPTY_INPUT = io.BytesIO()


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


def stream_socket(environ: dict[str, Any]) -> EventletHandover | GeventHandover | None:
    """How to take over a chunked GET response served over plain TCP by eventlet or our gevent handler; else None."""
    if environ.get("REQUEST_METHOD") != "GET":
        return None
    handover = environ.get(GeventHandover.KEY)
    if handover is not None:
        return handover if handover.chunked and not handover.tls else None
    stream = environ.get("eventlet.input")
    if stream is None or not environ.get("fanout.chunked"):
        return None
    green = _plain_tcp(stream.get_socket())
    return None if green is None else EventletHandover(green)


def _plain_tcp(green: Any) -> Any | None:
    # The plain TCP socket under eventlet's green one (_socket: monkey-patching replaces
    # socket.socket); not TLS, whose socket cannot take a raw send of its bytes.
    fd = getattr(green, "fd", None)
    return green if isinstance(fd, _socket.socket) and not hasattr(fd, "getpeercert") else None


def websocket_frame(payload: bytes, binary: bool = False) -> bytes:
    """One unmasked, uncompressed websocket frame (text unless binary): the same bytes suit every client."""
    first = 0x82 if binary else 0x81
    length = len(payload)
    if length <= 125:
        header = struct.pack("!BB", first, length)
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def websocket_close(code: int | None = None, reason: str | None = None) -> bytes:
    """A server's websocket close frame, with a status code (and a reason) or without."""
    return bytes(_SERVER_FRAMES.close(code, reason))


_SERVER_FRAMES = FrameProtocol(client=False, extensions=[])  # only to write frames: it keeps no state for that


def take_over(green_socket: Any) -> socket.socket:
    """Take a connection from eventlet's WSGI server: the response ends and leaves it open; its raw socket."""
    from eventlet import wsgi

    # eventlet shuts and closes the connection through these when the response ends.
    green_socket.shutdown = green_socket.close = _keep_open
    wsgi.WSGI_LOCAL.already_handled = True  # and writes nothing more (no end of a chunked body)
    return green_socket.fd


def _keep_open(*_args: Any) -> None:
    """What eventlet's shutdown and close of a connection taken over do: nothing."""


class EventletLoop:
    """The event-loop primitives of a taken-over connection under eventlet."""

    @staticmethod
    def watch(raw: socket.socket, readable: Callable[[int], None]) -> Any:
        """Call readable(fileno) from the hub whenever raw has something to read (or was closed)."""
        from eventlet import hubs

        hub = hubs.get_hub()
        return hub.add(hub.READ, raw.fileno(), readable, _ignore, _ignore)

    @staticmethod
    def unwatch(listener: Any) -> None:
        from eventlet import hubs

        hubs.get_hub().remove(listener)

    @staticmethod
    def spawn(func: Callable[[], None]) -> Any:
        """A green thread running func, which kill() ends."""
        from eventlet import spawn

        return spawn(func)

    @staticmethod
    def spawn_n(func: Callable[[], None]) -> None:
        from eventlet import spawn_n

        spawn_n(func)

    @staticmethod
    def wait_writable(raw: socket.socket) -> None:
        from eventlet.hubs import trampoline

        trampoline(raw, write=True)

    @staticmethod
    def wait_readable(raw: socket.socket, timeout: float) -> None:
        """Wait until raw is readable; TimeoutError after timeout seconds."""
        from eventlet.hubs import trampoline

        trampoline(raw, read=True, timeout=timeout, timeout_exc=TimeoutError)


class GeventLoop:
    """The event-loop primitives of a taken-over connection under gevent (its public API)."""

    @staticmethod
    def watch(raw: socket.socket, readable: Callable[[int], None]) -> Any:
        """Call readable(fileno) from the hub whenever raw has something to read (or was closed)."""
        from gevent import get_hub

        watcher = get_hub().loop.io(raw.fileno(), 1)  # 1: READ
        watcher.start(readable, raw.fileno())
        return watcher

    @staticmethod
    def unwatch(watcher: Any) -> None:
        watcher.stop()
        watcher.close()

    @staticmethod
    def spawn(func: Callable[[], None]) -> Any:
        """A greenlet running func, which kill() ends (and waits for)."""
        import gevent

        return gevent.spawn(func)

    @staticmethod
    def spawn_n(func: Callable[[], None]) -> None:
        import gevent

        gevent.spawn_raw(func)

    @staticmethod
    def wait_writable(raw: socket.socket) -> None:
        from gevent.socket import wait_write

        wait_write(raw.fileno())

    @staticmethod
    def wait_readable(raw: socket.socket, timeout: float) -> None:
        """Wait until raw is readable; TimeoutError after timeout seconds."""
        from gevent.socket import wait_read

        wait_read(raw.fileno(), timeout=timeout, timeout_exc=TimeoutError)


Loop = type[EventletLoop] | type[GeventLoop]


class EventletHandover:
    """How an SSE response served by eventlet is taken over: its green socket."""

    loop: Loop = EventletLoop

    def __init__(self, green: Any) -> None:
        self._green = green

    def abort(self) -> None:
        """Shut the connection before it is taken: the response's replay fails at once."""
        _abort(self._green.fd)

    def take(self) -> socket.socket:
        return take_over(self._green)


class GeventHandover:
    """How a response served by our gevent handler (httpserver.gevent_handler) is taken over from it.

    The handler puts one in each request's environ (under KEY), and removes and
    releases it when the response ends. `take` leaves the handler nothing to write or
    close: the end of the chunked body is the writer's to send, the
    connection's request loop ends, and its socket is detached from gevent's
    (socket.detach(), public API), the plain socket under it handed over.
    """

    KEY = "fanout.gevent_handover"
    loop: Loop = GeventLoop

    def __init__(self, handler: Any) -> None:
        self._handler: Any = handler

    def release(self) -> None:
        """Let go of the handler when the response ends: a copy of the environ (python-socketio keeps one per
        session) must not keep a finished request's handler alive."""
        self._handler = None

    @property
    def chunked(self) -> bool:
        """Whether gevent sends the response chunked: an HTTP/1.1 request, a body of unknown length."""
        return self._handler.request_version == "HTTP/1.1"

    @property
    def tls(self) -> bool:
        return hasattr(self._handler.socket, "getpeercert")

    def abort(self) -> None:
        """Shut the connection before it is taken: the response's replay fails at once."""
        _abort(self._handler.socket)

    def take(self) -> socket.socket:
        handler = self._handler
        handler.response_use_chunked = False  # process_result writes no end of the chunked body
        handler.close_connection = True  # handle_one_request reads no next request
        raw = _socket.socket(fileno=handler.socket.detach())  # the handler's own close then closes nothing
        raw.setblocking(False)
        return raw

    def unread(self) -> bytes:
        """What the handler's buffered reader holds past what was parsed (a websocket's next frames), once taken.

        Only the buffer: the connection is detached, so a reader with nothing
        buffered fails to read more rather than take what the new owner reads.
        """
        try:
            return bytes(self._handler.rfile.peek())
        except (OSError, ValueError):  # nothing buffered, and the socket under it is gone
            return b""

    def set_timeout(self, seconds: float | None) -> float | None:
        """Bound each wait on the connection's socket (None: unbounded); the previous bound."""
        previous = self._handler.socket.gettimeout()
        self._handler.socket.settimeout(seconds)
        return previous


def _ignore(*_args: Any) -> None:
    pass


def _yielding(items: list[Any], batch: int = 256) -> Iterator[Any]:
    """items, letting other green threads run after every batch of them (a sweep over thousands of clients)."""
    for count, item in enumerate(items, 1):
        yield item
        if count % batch == 0:
            time.sleep(0)  # cooperative under eventlet


class LiveConnection:
    """A client connection taken over from eventlet or gevent: written without waiting, watched by the hub.

    `send` writes at once what the socket takes; the rest waits in order and
    is written by a green thread started for it. Past max_pending waiting
    writes the client is cut off. `close` ends the connection (gracefully,
    with `farewell`, unless the client fell behind or went away) and calls
    `ended` once, from a green thread of its own.
    """

    farewell = b""

    def __init__(self, raw: socket.socket | None, max_pending: int, loop: Loop = EventletLoop) -> None:
        self._raw = raw  # None until the connection is taken over
        self._loop = loop
        self._max_pending = max_pending
        self._pending: deque[bytes] | None = None  # what the socket has not taken yet, in order
        self._drainer: Any = None
        self._listener: Any = None
        self.closed_reason: EndReason | None = None

    @property
    def watched(self) -> bool:
        return self._listener is not None

    def watch(self) -> None:
        """From now on the hub tells this connection when the client sends something or leaves."""
        self._listener = self._loop.watch(self._raw, self._readable)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        if self.closed_reason is not None:
            return
        if self._pending is not None:
            self._pending.append(data)
            if len(self._pending) > self._max_pending:
                self.close(EndReason.FELL_BEHIND)
            return
        try:
            sent = self._raw.send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(EndReason.GONE)
            return
        if sent < len(data):
            self._pending = deque([data[sent:]])
            self._drainer = self._loop.spawn(self._drain)

    @property
    def backlog(self) -> int:
        return len(self._pending or ())

    def close(self, reason: EndReason = EndReason.CLOSED) -> None:
        """End the connection, once; nothing here waits (a publisher holding locks may call it)."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if (reason in CUT or self._pending) and self._raw is not None:
            # Cut the connection rather than wait on a reader that does not read: it
            # reconnects and resumes from its last event id.
            _abort(self._raw)
        if self.watched:
            self._loop.spawn_n(self._end)

    def received(self, data: bytes) -> None:
        """What the client sent (called by the hub: nothing here may wait)."""

    def ended(self) -> None:
        """Called once, from a green thread, when the connection has ended."""

    def _drain(self) -> None:
        pending = self._pending
        try:
            while pending and self.closed_reason is None:
                self._loop.wait_writable(self._raw)  # type: ignore[arg-type]
                try:
                    sent = self._raw.send(pending[0])
                except BlockingIOError:
                    continue
                if sent < len(pending[0]):
                    pending[0] = pending[0][sent:]
                else:
                    pending.popleft()
        except OSError:
            self.close(EndReason.GONE)
        finally:
            self._drainer = None
            if self.closed_reason is None:
                self._pending = None

    def _readable(self, _fileno: int) -> None:
        if self.closed_reason is not None:
            return
        try:
            data = self._raw.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.received(data)
        else:
            self.close(EndReason.GONE)

    def _end(self) -> None:
        if self._drainer is not None:
            self._drainer.kill()
        self._loop.unwatch(self._listener)
        self._listener = None  # its callback is a method of this object: a reference cycle
        graceful = self.closed_reason not in CUT and not self._pending
        if graceful and self.farewell:
            try:
                self._raw.send(self.farewell)
            except OSError:
                graceful = False
        try:
            self.ended()
        finally:
            if graceful:
                self._finish_closing()
            self._raw.close()

    def _finish_closing(self) -> None:
        """What a graceful close does between the farewell and closing the socket."""


class SSEWriter(LiveConnection):
    """The live part of one SSE response: the publisher writes each event straight to the socket.

    A broker reader (`offer`, `close`). While the response's own green thread
    replays the log, offered events wait in a list; `go_live` then takes the
    connection over. `LiveStreams` writes its heartbeats and ends it when its
    token expires.
    """

    farewell = END_CHUNK

    def __init__(self, handover: EventletHandover | GeventHandover, accepts: Callable[[Event], bool] | None,
                 max_pending: int, on_end: Callable[[SSEWriter], None]) -> None:
        super().__init__(None, max_pending, handover.loop)
        self._handover: EventletHandover | GeventHandover | None = handover
        self._accepts = accepts
        self._on_end = on_end
        self._early: list[Event] | None = []  # events offered before go_live(); None once live
        self._streams: LiveStreams | None = None
        self.expires_at: float | None = None
        self.next_heartbeat = 0.0

    def offer(self, event: Event) -> None:
        """Send an event now, without waiting on the socket; called by the broker."""
        if self.closed_reason is not None or (self._accepts is not None and not self._accepts(event)):
            return
        if self._early is not None:
            self._early.append(event)
            if len(self._early) > self._max_pending:
                self.close(EndReason.FELL_BEHIND)
        else:
            self.send(event.sse_chunk)

    def close(self, reason: EndReason = EndReason.CLOSED) -> None:
        if self.closed_reason is None and reason in CUT and self._handover is not None:
            self._handover.abort()  # the response's green thread, writing the replay, fails at once and ends it
        super().close(reason)

    def go_live(self, last_id: int, streams: LiveStreams, expires_at: float | None) -> None:
        """Take the connection over and send the events after last_id from now on.

        Called by the response's green thread when its replay is written; the
        response then ends, and the server (eventlet's, or our gevent handler)
        neither closes the connection nor ends the chunked body.
        """
        self._raw = self._handover.take()  # type: ignore[union-attr]
        self._handover = None
        self.expires_at = expires_at
        # The first heartbeat at a random point, so that streams opened together do not beat together.
        self.next_heartbeat = time.time() + streams.heartbeat * random.uniform(0.5, 1.0)
        self._streams = streams
        streams.add(self)
        self.watch()
        early, self._early = self._early or [], None
        for event in early:
            if event.id > last_id:
                self.send(event.sse_chunk)

    def tick(self, now: float) -> None:
        """Write a heartbeat if one is due, or end the stream if its token expired; called by LiveStreams."""
        if self.expires_at is not None and now >= self.expires_at:
            self.close(EndReason.TOKEN_EXPIRED)
        elif now >= self.next_heartbeat:
            self.next_heartbeat = now + self._streams.heartbeat  # type: ignore[union-attr]
            if not self.backlog:
                self.send(HEARTBEAT_CHUNK)

    def ended(self) -> None:
        self._streams.discard(self)  # type: ignore[union-attr]
        self._on_end(self)


class LiveStreams:
    """The SSE streams that went live: one green thread writes their heartbeats and ends those whose token expired."""

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self._streams: set[SSEWriter] = set()

    def add(self, stream: SSEWriter) -> None:
        self._streams.add(stream)

    def discard(self, stream: SSEWriter) -> None:
        self._streams.discard(stream)

    def run(self, stopping: threading.Event) -> None:
        """Until stopping is set."""
        while not stopping.wait(min(1.0, self.heartbeat / 2)):
            now = time.time()
            for stream in _yielding(list(self._streams)):
                stream.tick(now)

    def close(self) -> None:
        for stream in list(self._streams):
            stream.close()


class LiveWebSocket(LiveConnection):
    """A Socket.IO websocket taken over from eventlet or gevent, standing in for its Engine.IO socket's queue.

    What Engine.IO sends (`put`) is encoded and written at once; what the
    client sends is parsed here (wsproto) and handed to Engine.IO in order,
    by a green thread started when there is something to hand. A protocol
    error ends the connection with a close frame giving its status code
    (`fail`), and a graceful close waits a little for the client's own.
    """

    farewell = WEBSOCKET_CLOSE

    def __init__(self, owner: LiveWebSockets, eio_socket: Any, raw: socket.socket, max_pending: int,
                 loop: Loop = EventletLoop) -> None:
        super().__init__(raw, max_pending, loop)
        self._owner = owner
        self.eio_socket = eio_socket
        self._frames: FrameProtocol | None = FrameProtocol(client=False, extensions=[])  # None once unreadable
        self._parts: list[Any] = []  # of a message in several frames
        self._size = 0  # of those parts
        self._inbox: deque[Any] = deque()
        self._handing = False
        self._client_closed = False  # its close frame came

    def fail(self, code: int, why: str) -> None:
        """End the connection with a close frame giving code (a protocol error, a message too big) and why."""
        if self.closed_reason is not None:
            return
        logger.info("closing Socket.IO connection %s: %s", self.eio_socket.sid, why)
        self.farewell = websocket_close(code, why)
        self.close(EndReason.PROTOCOL_ERROR)

    # -- the queue interface Engine.IO sends through ------------------------

    def put(self, pkt: Any) -> None:
        if pkt is None:  # Engine.IO closed the socket
            self.close(EndReason.SERVER_CLOSED)
            return
        data = pkt.encode()
        binary = isinstance(data, bytes)
        self.send(websocket_frame(data if binary else data.encode(), binary=binary))

    def empty(self) -> bool:
        return not self.backlog

    def qsize(self) -> int:
        return self.backlog

    def task_done(self) -> None:
        pass

    def join(self) -> None:
        pass

    # -- what the client sends ---------------------------------------------

    def received(self, data: bytes) -> None:
        frames = self._frames
        if frames is None:
            return
        frames.receive_bytes(data)
        try:
            for frame in frames.received_frames():
                if frame.opcode is Opcode.PING:
                    self.send(bytes(frames.pong(frame.payload)))  # type: ignore[arg-type]
                elif frame.opcode is Opcode.CLOSE:
                    self._client_closed = True
                    if self.closed_reason is None:
                        self.farewell = websocket_close(frame.payload[0])  # type: ignore[index]  # its code, echoed
                    self.close(EndReason.CLIENT_CLOSED)
                    return
                elif frame.opcode is not Opcode.PONG and self.closed_reason is None:
                    self._add(frame)
        except ParseFailed as exc:
            frames._parse_more.close()  # a generator over the parser itself: a cycle otherwise
            self._frames = None
            self.fail(exc.code, f"websocket protocol error: {exc}")
            return
        if self._inbox and not self._handing:
            self._handing = True
            self._loop.spawn_n(self._hand_over)

    def _add(self, frame: Any) -> None:
        """Add a data frame (or part of one) to the message it belongs to; a whole message goes to Engine.IO."""
        self._parts.append(frame.payload)
        self._size += len(frame.payload)
        if self._size > self._owner.max_message:
            self._parts, self._size = [], 0
            self.fail(CloseReason.MESSAGE_TOO_BIG, f"a message over {self._owner.max_message} bytes")
        elif frame.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            message = parts[0][:0].join(parts)
            if message == ENGINEIO_PONG and not self._inbox:
                # All Engine.IO does with a pong (schedule the next ping, see
                # LiveWebSockets) cannot wait: done here, without a green thread each.
                self.eio_socket.schedule_ping()
            else:
                self._inbox.append(message)

    def _hand_over(self) -> None:
        """Give Engine.IO the client's packets, in order (own green thread: its handlers may wait)."""
        try:
            while self._inbox and self.closed_reason is None:
                try:
                    pkt = eio_packet.Packet(encoded_packet=self._inbox.popleft())
                except ValueError:  # not an Engine.IO packet: Node ends the connection too
                    self.fail(CloseReason.PROTOCOL_ERROR, "not an Engine.IO packet")
                    return
                try:
                    self.eio_socket.receive(pkt)
                except eio_exceptions.UnknownPacketError:
                    continue  # as Engine.IO's own reader: ignored
                except Exception:  # noqa: BLE001 - logged, and it ends this connection, not the server
                    logger.exception("Socket.IO connection %s: error in receiving a packet", self.eio_socket.sid)
                    self.fail(CloseReason.INTERNAL_ERROR, "internal error")
        finally:
            self._handing = False

    def _finish_closing(self) -> None:
        """The rest of the closing handshake: wait (a little) for the client's close frame, reading what comes.

        Closing a socket with unread input resets the connection, and the client
        may then never read the close frame it was sent.
        """
        try:
            self._raw.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
            deadline = time.monotonic() + CLOSING_HANDSHAKE_SECONDS
            while not self._client_closed and (left := deadline - time.monotonic()) > 0:
                self._loop.wait_readable(self._raw, left)  # type: ignore[arg-type]
                try:
                    data = self._raw.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                self.received(data)  # the connection is closed: only a close frame counts
        except OSError:  # gone, or too slow (TimeoutError)
            pass

    def ended(self) -> None:
        self._owner.forget(self)
        if self.closed_reason is EndReason.FELL_BEHIND:
            logger.info("closing Socket.IO connection %s: it fell more than %s events behind",
                        self.eio_socket.sid, self._max_pending)
        eio = self.eio_socket.server
        behind = self.closed_reason is EndReason.FELL_BEHIND
        reason = eio.reason.TRANSPORT_ERROR if behind else eio.reason.TRANSPORT_CLOSE
        self.eio_socket.close(wait=False, abort=True, reason=reason)
        # As Engine.IO does when a websocket of its own ends, rather than leave it to its sweep
        # of every socket (once per ping timeout).
        eio.sockets.pop(self.eio_socket.sid, None)
        # What would keep this connection after its end, or make it a reference cycle that only a
        # garbage collection frees: Engine.IO's socket holds it as its queue (and that sweep goes
        # over a copy of the table, which may hold the socket a ping timeout longer), and wsproto's
        # FrameProtocol holds a generator over itself.
        self.eio_socket.queue = _ENDED
        if self._frames is not None:  # None after a protocol error, which closed it already
            self._frames._parse_more.close()


class _EndedQueue:
    """The queue of an Engine.IO socket whose connection has ended: it takes nothing and holds nothing."""

    def put(self, pkt: Any) -> None:
        pass

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def task_done(self) -> None:
        pass

    def join(self) -> None:
        pass


_ENDED = _EndedQueue()


class LiveWebSockets:
    """The Socket.IO server's websocket connections, taken over from eventlet or our gevent handler once open.

    Engine.IO keeps a green thread per connection to read, one to write and
    one to wait for the next ping; a taken-over connection has none. The
    server's websocket class is wrapped to take each connection over once its
    transport is set up, and each Engine.IO socket's `schedule_ping` is
    replaced so that one green thread sends the pings of all of them.
    """

    def __init__(self, sio_server: Any, max_pending: int) -> None:
        self.sio = sio_server
        self.eio = sio_server.eio
        self.max_pending = max_pending
        self.max_message = int(self.eio.max_http_buffer_size)
        self._by_sid: dict[str, LiveWebSocket] = {}
        # A heap of (when due, tie-break, Engine.IO socket, None) for the next ping, and of
        # (when due, tie-break, Engine.IO socket, when pinged) for the deadline of its pong. The
        # sockets are weak references: one that closes is freed at once, not when its entry is due.
        self._pings: list[tuple[float, int, weakref.ref[Any], float | None]] = []
        self._order = itertools.count()
        self._stopping = threading.Event()
        self._pinging = False
        base = self.eio._async.get("websocket")
        self._gevent = base is not None and base.__module__ == "engineio.async_drivers.gevent"
        self.enabled = base is not None and ("eventlet" in base.__module__ or self._gevent)
        if not self.enabled:
            return
        live = self

        class TakenOverWebSocket(base):  # type: ignore[misc, valid-type]
            def __init__(self, handler: Any, server: Any) -> None:
                eio_socket = handler.__self__
                super().__init__(lambda ws: live._serve(eio_socket, ws, handler), server)

        self.eio._async = {**self.eio._async, "websocket": TakenOverWebSocket}
        self.eio.sockets = _SocketsNoted(self.eio.sockets, self._noted)

    def send(self, eio_sid: str, frame: bytes) -> bool:
        """Write a pre-encoded frame to a taken-over connection; False when eio_sid is not one."""
        connection = self._by_sid.get(eio_sid)
        if connection is None:
            return False
        connection.send(frame)
        return True

    def emit(self, rooms: list[str], message: str) -> list[str]:
        """Send a Socket.IO message to the clients in rooms; the Engine.IO ids of those too far behind to keep.

        A taken-over websocket gets the message's frame, encoded once for all of
        them; any other client (long-polling, an upgrade under way) its Engine.IO queue.
        """
        frame = websocket_frame(f"4{message}".encode())  # an Engine.IO MESSAGE packet
        slow, packet = [], None
        for _sid, eio_sid in self.sio.manager.get_participants("/", rooms):
            if self.send(eio_sid, frame):
                continue
            packet = packet or eio_packet.Packet(eio_packet.MESSAGE, message)
            self.eio.send_packet(eio_sid, packet)
            eio_socket = self.eio.sockets.get(eio_sid)
            if eio_socket is not None and eio_socket.queue.qsize() > self.max_pending:
                slow.append(eio_sid)
        return slow

    def cut(self, eio_sid: str) -> None:
        """Close a client that fell behind, transport and all: its Socket.IO client reconnects and resumes."""
        connection = self._by_sid.get(eio_sid)
        if connection is not None:
            connection.close(EndReason.FELL_BEHIND)
            return
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is not None:
            eio_socket.close(wait=False, abort=True, reason=self.eio.reason.TRANSPORT_ERROR)

    def forget(self, connection: LiveWebSocket) -> None:
        self._by_sid.pop(connection.eio_socket.sid, None)

    def stop(self) -> None:
        self._stopping.set()

    def _noted(self, eio_socket: Any) -> None:
        """A new Engine.IO socket: its pings, and the end of those it leaves unanswered, come from one green thread."""
        # A weak reference, here and in the heap of pings: no cycle through the socket's own attribute.
        eio_socket.schedule_ping = functools.partial(self._schedule_ping, weakref.ref(eio_socket))
        if not self._pinging:
            self._pinging = True
            self.eio.start_background_task(self._ping)

    def _schedule_ping(self, ref: weakref.ref[Any]) -> None:
        """An Engine.IO socket's schedule_ping: as Engine.IO's, after the previous ping's pong."""
        eio_socket = ref()
        if eio_socket is not None and eio_socket.last_ping:
            eio_socket.last_ping = None
            # A little early at random, so that clients that came together (after a
            # restart, say) are not all pinged, and do not all answer, at once.
            due = time.time() + self.eio.ping_interval * random.uniform(0.75, 1.0)
            heapq.heappush(self._pings, (due, next(self._order), ref, None))

    def _ping(self) -> None:
        # Every tick sends the pings now due, a few at a time: sent a second's worth at
        # once, they (and the pongs that come straight back) stalled the server for
        # several ms, which showed in the tail of every client's latency.
        # Each ping puts its deadline in the same heap: a client that has not answered
        # by then is dropped at that tick (Engine.IO's own check comes once per
        # ping timeout, up to a whole ping timeout late).
        while not self._stopping.wait(PING_TICK_SECONDS):
            self._send_due_pings(time.time())

    def _send_due_pings(self, now: float) -> None:
        pings, ping = self._pings, eio_packet.Packet(eio_packet.PING)
        due, unanswered = [], []
        while pings and pings[0][0] <= now:
            _, _, ref, pinged_at = heapq.heappop(pings)
            eio_socket = ref()
            if eio_socket is None:
                continue  # closed and freed meanwhile
            if pinged_at is None:
                due.append(eio_socket)
            elif eio_socket.last_ping == pinged_at:  # a pong sets it to None, the next ping to its time
                unanswered.append(eio_socket)
        for eio_socket in unanswered:
            self._ping_timed_out(eio_socket)
        for eio_socket in _yielding(due, batch=32):
            if not eio_socket.closing and not eio_socket.closed:
                eio_socket.last_ping = now
                eio_socket.send(ping)
                deadline = now + self.eio.ping_timeout
                heapq.heappush(pings, (deadline, next(self._order), weakref.ref(eio_socket), now))
        if len(pings) > 4 * len(self.eio.sockets) + 64:
            # Mostly sockets that closed before their entry came due: dropped now rather than
            # up to a ping interval later, so that the heap keeps to the size of the open ones.
            pings[:] = [entry for entry in pings if entry[2]() is not None]
            heapq.heapify(pings)

    def _ping_timed_out(self, eio_socket: Any) -> None:
        """End a connection whose client did not answer its ping within the ping timeout (as Engine.IO does)."""
        if eio_socket.closing or eio_socket.closed:
            return
        logger.info("closing Socket.IO connection %s: no pong within %s s of its ping",
                    eio_socket.sid, self.eio.ping_timeout)
        # Engine.IO's own ping timeout sends no CLOSE packet either: the transport just ends.
        eio_socket.close(wait=False, abort=True, reason=self.eio.reason.PING_TIMEOUT)

    def _serve(self, eio_socket: Any, ws: Any, handler: Any) -> Any:
        """Set the websocket transport up as Engine.IO does, then take the connection over."""
        transport = self._transport(ws)
        if transport is None:
            return handler(ws)
        if eio_socket.connected and not self._upgrade(eio_socket, transport):
            return []
        eio_socket.connected = eio_socket.upgraded = True
        eio_socket.upgrading = False
        raw, unread = transport.take()
        connection = LiveWebSocket(self, eio_socket, raw, self.max_pending, transport.loop)
        waiting, eio_socket.queue = eio_socket.queue, connection
        self._by_sid[eio_socket.sid] = connection
        connection.watch()
        self._slim_environ(eio_socket.sid)
        while not waiting.empty():  # what Engine.IO queued before: its OPEN packet, or during the upgrade
            pkt = waiting.get_nowait()
            if pkt is None or pkt.packet_type != eio_packet.NOOP:
                connection.put(pkt)
        if unread:  # frames the client sent right after its upgrade, read ahead by the server
            connection.received(unread)
        return []

    def _transport(self, ws: Any) -> _EventletWebSocket | _GeventWebSocket | None:
        """How to finish the upgrade and take over a websocket served over plain TCP; None for any other."""
        if not self._gevent:
            green = _plain_tcp(ws.socket)
            return None if green is None else _EventletWebSocket(ws, green)
        handover = getattr(ws, "environ", {}).get(GeventHandover.KEY)  # only our handler (not gunicorn's) offers it
        if handover is None or handover.tls:
            return None
        return _GeventWebSocket(ws, handover)

    def _upgrade(self, eio_socket: Any, ws: _EventletWebSocket | _GeventWebSocket) -> bool:
        """The probe and upgrade of a connection that began with long-polling (as Engine.IO does it).

        Anything else, or nothing within a ping interval and timeout, ends the
        websocket, and the session goes on over long-polling (as Engine.IO and
        Node do).
        """
        eio_socket.upgrading = True  # packets wait in the queue meanwhile
        timeout = ws.set_timeout(self.eio.ping_interval + self.eio.ping_timeout)
        try:
            probe = self._next_packet(ws)
            if probe is None or probe.packet_type != eio_packet.PING or probe.data != "probe":
                return False
            try:
                ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            except OSError:
                return False
            eio_socket.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            upgrade = self._next_packet(ws)
            return upgrade is not None and upgrade.packet_type == eio_packet.UPGRADE
        finally:
            eio_socket.upgrading = False
            ws.set_timeout(timeout)

    @staticmethod
    def _next_packet(ws: _EventletWebSocket | _GeventWebSocket) -> Any | None:
        """The client's next Engine.IO packet on a websocket the server still serves; None if none came readable."""
        data = ws.receive()
        try:
            return None if data is None else eio_packet.Packet(encoded_packet=data)
        except ValueError:  # not an Engine.IO packet
            return None

    def _slim_environ(self, eio_sid: str) -> None:
        """Drop what the connection's request environment holds of eventlet's request objects.

        Socket.IO keeps the environment for the connection's lifetime (Flask-SocketIO
        builds each event's request context from it); the request's input and
        handler are long gone, and their objects would stay with it.
        """
        environ = self.sio.environ.get(eio_sid)
        if environ is None:
            return
        for key in ("eventlet.input", "eventlet.posthooks", "eventlet.set_idle", "werkzeug.request", "wsgi.websocket",
                    GeventHandover.KEY):
            environ.pop(key, None)
        environ["wsgi.input"] = _EMPTY_INPUT


class _EventletWebSocket:
    """An open websocket that eventlet serves (python-engineio's eventlet driver, eventlet's RFC6455WebSocket)."""

    loop: Loop = EventletLoop

    def __init__(self, ws: Any, green: Any) -> None:
        self._ws = ws
        self._green = green

    def set_timeout(self, seconds: float | None) -> float | None:
        previous = self._ws.socket.gettimeout()
        self._ws.socket.settimeout(seconds)
        return previous

    def receive(self) -> str | bytes | None:
        """The client's next message; None when it closed the websocket, sent a broken one or nothing in time."""
        try:
            return self._ws.wait()  # None when the client closed it; eventlet answers a broken frame with a close frame
        except (OSError, ValueError):  # gone, silent too long, or text that is not UTF-8 (eventlet sent 1011)
            return None

    def send(self, text: str) -> None:
        self._ws.send(text)

    def take(self) -> tuple[socket.socket, bytes]:
        """The raw socket, taken from eventlet, and what was read from it but not parsed (nothing, here)."""
        self._ws.websocket_closed = True  # eventlet sends no closing frame when the handler returns
        return take_over(self._green), b""  # eventlet's websocket reads a frame's bytes exactly


class _GeventWebSocket:
    """An open websocket that our gevent handler serves (python-engineio's gevent driver over gevent-websocket's)."""

    loop: Loop = GeventLoop

    def __init__(self, ws: Any, handover: GeventHandover) -> None:
        self._websocket = ws._sock  # gevent-websocket's WebSocket
        self._handover = handover

    def set_timeout(self, seconds: float | None) -> float | None:
        return self._handover.set_timeout(seconds)

    def receive(self) -> str | bytes | None:
        """The client's next message; None when it closed the websocket, sent a broken one or nothing in time."""
        try:
            return self._websocket.receive()  # None: gevent-websocket has closed it (the client's close, an error)
        except OSError:  # WebSocketError: closed already
            return None

    def send(self, text: str) -> None:
        self._websocket.send(text)  # its WebSocketError is an OSError

    def take(self) -> tuple[socket.socket, bytes]:
        """The raw socket, taken from gevent, and what its buffered reader read ahead (the client's next frames)."""
        websocket = self._websocket
        websocket.closed = True  # gevent-websocket's handler writes no close frame after the app returns
        # Without its handler, the websocket's finalizer (a close() that finds it closed) stops at once: it
        # would otherwise make classes in reference cycles for its app (current_app), two per connection.
        websocket.handler = websocket.environ = None
        raw = self._handover.take()
        return raw, self._handover.unread()


class _SocketsNoted(dict):  # type: ignore[type-arg]
    """Engine.IO's dict of sockets, calling noted(socket) on each new one before Engine.IO uses it."""

    def __init__(self, sockets: dict[str, Any], noted: Callable[[Any], None]) -> None:
        super().__init__(sockets)
        self._noted = noted

    def __setitem__(self, sid: str, eio_socket: Any) -> None:
        self._noted(eio_socket)
        super().__setitem__(sid, eio_socket)


def close_on_malformed_packets(eio: Any, malformed: type[Exception]) -> None:
    """Close the connection of a client that sends a packet that does not parse (decoding raises malformed).

    Socket.IO would log the error with its traceback, drop the packet and keep
    the connection, leaving a client that asked for an acknowledgement waiting.
    This wraps Engine.IO's message handler (python-socketio's), under every server.
    """
    handle = eio.handlers["message"]

    def on_message(eio_sid: str, data: Any) -> Any:
        try:
            return handle(eio_sid, data)
        except malformed as exc:
            logger.info("closing Socket.IO connection %s: a packet that does not parse (%s)", eio_sid, exc)
            eio_socket = eio.sockets.get(eio_sid)
            if eio_socket is not None:  # without waiting for a polling client to fetch the close
                eio_socket.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)
            return None

    eio.on("message", on_message)
