"""Connection churn: clients that connect and leave, a hundred at a time, leave nothing behind in the server.

Browsers reconnect all day. What a connection that has ended leaves in the
server must not grow with the number of connections that came and went:
neither entries in tables (Engine.IO's sockets, the heaps of pings and token
expiries) nor reference cycles, which only the garbage collector frees, and
which the server freezes (heap.py) and frees only at its hourly full
collection when the collector has not freed them before.

Two measures, from the server's memory diagnostic (MEMORY_DIAGNOSTICS=1),
between N and 3N cycles, per transport: the bytes Python holds, by
tracemalloc, after a collection of what is not frozen (what production
keeps); and the objects the garbage collector freed (how many a connection
leaves in reference cycles: the collector may free them in time, or not,
which the first measure alone would catch only by chance). The process's
resident size would tell the first more noisily (the allocator keeps arenas
and fragments), and counting objects misses the ones the collector does not
track (strings, tuples of numbers).

The unit tests at the end check the same of one connection, deterministically:
once it has ended, its objects are freed by reference counting alone.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import time
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio
import websocket
from engineio import socket as engineio_socket

from support import LiveServer, make_token, takeover_off, wait_for
from tasknotify.live.takeover.fanout import EventletHandover, LiveStreams, LiveWebSocket, LiveWebSockets, SSEWriter

# The unit tests run eventlet's hub in this process, and importing eventlet says it is deprecated.
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*Eventlet is deprecated")

# Bytes held per cycle at most, between the two measures. The leak was up to 790 (SSE), about 5000
# (Socket.IO over websocket) and 4000 to 7000 (long-polling); what is left is a few dozen at most
# (tables that reach their working size).
SSE_BOUND = 64
SOCKETIO_BOUND = 128
# Objects per cycle left in reference cycles for the garbage collector, at most. A connection's own
# objects were: 55 per SSE cycle, 150 per Socket.IO cycle over websocket, 280 over long-polling (what
# the collector missed before heap.py froze it stayed for an hour). What is left is none but werkzeug's
# URL matcher's, 8 per HTTP request (an SSE stream's).
SSE_CYCLES = 11
SOCKETIO_CYCLES = 4
# Engine.IO's sweep of its sockets goes over a copy of its table once per ping timeout, and a
# long-poll waits on an eventlet timer of ping interval + timeout, which stays in the hub until then
# even when the poll is answered earlier: both hold what a connection leaves that much longer (a
# bounded time). So do the timers of the HTTP server's waits for a request's head (httpserver.py):
# cancelled, each stays in eventlet's heap until its time comes (up to KEEPALIVE_IDLE_SECONDS, 75 by
# default) or until the hub compacts a heap of more than 1000 that is half cancelled, so without short
# ones here the measure would count a few hundred of them more or less, at random. Short ones let each
# measure settle within seconds.
PING_TIMEOUT = 1.0
HEAD_WAIT = 2.0  # HEADER_TIMEOUT_SECONDS and KEEPALIVE_IDLE_SECONDS


def start_churn_server(start_server: Callable[..., LiveServer], transport: str = "socketio",
                       **env: Any) -> LiveServer:
    if os.environ.get("TEST_ASYNC_MODE", "eventlet") != "eventlet" and takeover_off(transport) is not None:
        # On gevent's queued path an SSE client that left is noticed only at the stream's next heartbeat,
        # and a Socket.IO websocket is gevent-websocket's (fanout.py): not measured here.
        pytest.skip(f"connection churn under gevent is measured on the take-over's path: {takeover_off(transport)}")
    return start_server(MEMORY_DIAGNOSTICS="1", PYTHONTRACEMALLOC="1", MAX_STREAMS_PER_USER="1000",
                        LOG_LEVEL="WARNING", SOCKETIO_PING_TIMEOUT=str(PING_TIMEOUT),
                        HEADER_TIMEOUT_SECONDS=str(HEAD_WAIT), KEEPALIVE_IDLE_SECONDS=str(HEAD_WAIT), **env)


@dataclass
class PerCycle:
    """Per connection that came and went: bytes the server still holds, objects its garbage collector freed."""

    held_bytes: float
    collected: float
    said: str  # what the diagnostic said

    def check(self, held_bound: float, collected_bound: float) -> None:
        assert self.held_bytes < held_bound and self.collected < collected_bound, (
            f"per cycle, {self.held_bytes:.0f} bytes held (at most {held_bound}) and {self.collected:.1f} objects "
            f"left in reference cycles for the garbage collector (at most {collected_bound}): {self.said}")


@dataclass
class Churn:
    """Clients of one transport that connect, batch at a time, and leave."""

    transport: str  # as /healthz counts it
    connect: Callable[[LiveServer, str], Any]
    leave: Callable[[Any, int], None]  # the client and its number in its batch
    batch: int = 100
    settle: float = max(PING_TIMEOUT, HEAD_WAIT) + 0.5  # seconds after which what waits on a timer or a sweep has gone
    token: str = field(default_factory=lambda: make_token("churn@example.com", ("updates:read",)))

    def cycles(self, server: LiveServer, count: int) -> None:
        for _ in range(count // self.batch):
            clients = [self.connect(server, self.token) for _ in range(self.batch)]
            for number, client in enumerate(clients):
                self.leave(client, number)

    def held_per_cycle(self, server: LiveServer, n: int) -> PerCycle:
        """What the server holds, and what its garbage collector frees, per cycle between n and 3n cycles."""
        clients = [self.connect(server, self.token) for _ in range(self.batch)]
        wait_for(lambda: _streams(server)[self.transport] == self.batch, 10,
                 f"{self.batch} {self.transport} streams open together (live)")
        for number, client in enumerate(clients):
            self.leave(client, number)
        self.cycles(server, n - self.batch)
        first = self.held(server)
        self.cycles(server, 2 * n)
        second = self.held(server)
        return PerCycle(
            held_bytes=(second["traced_bytes"] - first["traced_bytes"]) / (2 * n),
            collected=(second["gc_collected_total"] - first["gc_collected_total"]) / (2 * n),
            said=f"{self.transport}, from {n} to {3 * n} cycles: {first} -> {second}",
        )

    def held(self, server: LiveServer) -> dict[str, Any]:
        """The server's memory once every stream has ended and it no longer falls from one look to the next,
        self.settle seconds apart."""
        wait_for(lambda: _streams(server) == {"sse": 0, "socketio": 0}, 30, "every stream to end")
        looks = [(time.monotonic(), memory(server))]

        def settled() -> dict[str, Any] | None:
            if time.monotonic() - looks[-1][0] < self.settle:
                return None
            looks.append((time.monotonic(), memory(server)))
            before, now = looks[-2][1], looks[-1][1]
            return now if now["traced_bytes"] > before["traced_bytes"] - 4096 else None

        return wait_for(settled, 60, "the server's memory to settle")


def _streams(server: LiveServer) -> dict[str, int]:
    return server.get("/healthz").json()["streams"]


def memory(server: LiveServer) -> dict[str, Any]:
    response = server.get("/debug/memory")
    assert response.status_code == 200, response.text
    return response.json()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection early: {data!r}"
        data += chunk
    return data


def sse_client(server: LiveServer, token: str) -> socket.socket:
    """An SSE stream, open once its first chunk has come (the server then takes it live)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"GET /task_updates HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    data = _read_until(sock, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]
    if b": connected" not in data:
        _read_until(sock, b": connected")
    return sock


def websocket_client(server: LiveServer, token: str) -> websocket.WebSocket:
    """A Socket.IO client over websocket, as cheap as one can be: Engine.IO's and Socket.IO's handshakes by hand."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=10)
    assert ws.recv().startswith("0"), "Engine.IO's OPEN packet"
    ws.send("40" + json.dumps({"token": token}))
    while not (message := ws.recv()).startswith("40"):
        assert not message.startswith("44"), f"refused: {message}"
    return ws


def polling_client(server: LiveServer, token: str) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    client.connect(server.url, auth={"token": token}, transports=["polling"], wait_timeout=10)
    return client


@pytest.mark.serial
def test_sse_clients_that_come_and_go_leave_nothing_behind(start_server) -> None:
    server = start_churn_server(start_server, "sse")
    churn = Churn("sse", sse_client, lambda sock, _number: sock.close())
    churn.held_per_cycle(server, 600).check(SSE_BOUND, SSE_CYCLES)


@pytest.mark.serial
def test_socketio_clients_that_come_and_go_leave_nothing_behind(start_server) -> None:
    def leave(ws: websocket.WebSocket, number: int) -> None:
        if number % 2:
            ws.close()  # with a close frame, as a browser closing the page
        else:
            ws.shutdown()  # gone without a word, as a network that drops

    server = start_churn_server(start_server)
    Churn("socketio", websocket_client, leave).held_per_cycle(server, 600).check(SOCKETIO_BOUND, SOCKETIO_CYCLES)


@pytest.mark.serial
def test_socketio_clients_over_long_polling_that_come_and_go_leave_nothing_behind(start_server) -> None:
    server = start_churn_server(start_server, SOCKETIO_PING_INTERVAL="1")
    # python-socketio's own client: it costs threads, so fewer, and fewer at a time.
    churn = Churn("socketio", polling_client, lambda client, _number: client.disconnect(), batch=20,
                  settle=max(1 + PING_TIMEOUT, HEAD_WAIT) + 0.5)
    churn.held_per_cycle(server, 200).check(SOCKETIO_BOUND, SOCKETIO_CYCLES)


# -- what a connection that ended leaves: nothing, freed by reference counting alone ----------------


@pytest.fixture
def no_collections() -> Iterator[None]:
    """No garbage collection meanwhile: what is freed is freed by reference counting, as soon as it is let go."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def _client_frame(opcode: int, text: str = "") -> bytes:
    """A masked frame, as a websocket client sends it (short payloads only)."""
    mask = b"\x01\x02\x03\x04"
    payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(text.encode()))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + payload


def _run_hub_until(predicate: Any) -> None:
    import eventlet

    for _ in range(500):
        if predicate():
            return
        eventlet.sleep(0.01)
    raise AssertionError("the hub never got there")


@pytest.mark.parametrize("leaves", ["with a close frame", "without a word"])
def test_a_websocket_that_ended_and_its_engineio_socket_hold_no_reference_cycle(no_collections, leaves) -> None:
    live = LiveWebSockets(socketio.Server(async_mode="eventlet"), max_pending=10)
    live.stop()  # no green thread of pings here: the heap of pings is looked at directly
    eio_socket = engineio_socket.Socket(live.eio, "sid1")
    live.eio.sockets["sid1"] = eio_socket  # schedule_ping becomes the shared heap's
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection = LiveWebSocket(live, eio_socket, ours, max_pending=10)  # as LiveWebSockets._serve does
    eio_socket.queue = connection
    connection.watch()
    theirs.sendall(_client_frame(0x1, "3"))  # a pong: its next ping goes in the heap
    _run_hub_until(lambda: live._pings)
    if leaves == "with a close frame":
        theirs.sendall(_client_frame(0x8))
    else:
        theirs.close()
    _run_hub_until(lambda: ours.fileno() == -1)  # the connection has ended (its socket closed)
    assert "sid1" not in live.eio.sockets  # as Engine.IO does when a websocket of its own ends
    # Engine.IO's sweep of its sockets goes slowly over a copy of its table: it may hold the
    # closed socket a while longer, but not the connection. Nor wsproto's frame parser, which
    # holds a generator over itself (a collection would free it by finalizing the generator,
    # and neither count nor save it).
    swept = [eio_socket]
    gone = weakref.ref(connection), weakref.ref(connection._frames)
    del connection
    assert [ref() for ref in gone] == [None, None], "held after the end, or by a reference cycle"
    engineio_gone = weakref.ref(eio_socket)
    del eio_socket, swept
    assert engineio_gone() is None, "Engine.IO's socket held by a reference cycle after the end"
    assert live._pings[0][2]() is None  # the heap of pings holds it weakly
    theirs.close()


def test_an_sse_stream_that_ended_holds_no_reference_cycle(no_collections) -> None:
    ended: list[str | None] = []
    streams = LiveStreams(heartbeat=15)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    writer = SSEWriter(EventletHandover(types.SimpleNamespace(fd=ours)), None, max_pending=10,
                       on_end=lambda writer: ended.append(writer.closed_reason))
    writer.go_live(0, streams, expires_at=None)
    theirs.close()  # the client leaves
    _run_hub_until(lambda: ours.fileno() == -1)  # the stream has ended, its socket closed
    gone = weakref.ref(writer)
    del writer
    assert gone() is None, "held by a reference cycle after the end"
    assert ended == ["client went away"]


def test_a_socketio_event_matches_no_url_rule(app) -> None:
    """Flask-SocketIO runs each event in a request context on /socket.io/: no NotFound kept with its traceback."""
    with app.test_request_context("/socket.io/", environ_base={"QUERY_STRING": "EIO=4&transport=websocket"}):
        from flask import request

        assert request.routing_exception is None
    with app.test_request_context("/no-such-page"):
        from flask import request

        assert request.routing_exception is not None  # an HTTP request still gets its 404



# Bytes Python holds per idle SSE stream, at most. Taken over it is its socket and a small object: about
# 1.2 KB under gevent, 4 KB under eventlet; on the queued path a greenlet, its response's generator and
# a queue: 26 KB under gevent.
IDLE_SSE_BOUND = 8192
# Per idle Socket.IO websocket: taken over, its socket, a small object and Engine.IO's and Socket.IO's
# state of the client (its socket, session, environ, rooms): about 6.7 KB under gevent, 9.6 KB under
# eventlet; on gevent's queued path also three greenlets, gevent-websocket's objects and a queue: 47 KB.
IDLE_SOCKETIO_BOUND = 16384
IDLE_STREAMS = 100


def _held_per_idle_stream(server: LiveServer, transport: str, connect: Callable[[LiveServer, str], Any]) -> float:
    """Bytes Python holds per idle stream of transport (as /healthz counts it), IDLE_STREAMS of them open."""
    token = make_token("idle@example.com", ("updates:read",))
    connect(server, token).close()  # first-use imports and caches
    wait_for(lambda: _streams(server)[transport] == 0, 30, "the warm-up stream to end")
    before = memory(server)
    clients = [connect(server, token) for _ in range(IDLE_STREAMS)]
    wait_for(lambda: _streams(server)[transport] == IDLE_STREAMS, 10, "the idle streams")
    after = memory(server)
    for client in clients:
        client.close()
    wait_for(lambda: _streams(server)[transport] == 0, 10, "the streams to end as their clients leave")
    return (after["traced_bytes"] - before["traced_bytes"]) / IDLE_STREAMS


def _idle_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(MEMORY_DIAGNOSTICS="1", PYTHONTRACEMALLOC="1", MAX_STREAMS_PER_USER="1000",
                        LOG_LEVEL="WARNING")


@pytest.mark.skipif(takeover_off("sse") is not None, reason=f"the take-over's own test: {takeover_off('sse')}")
def test_an_idle_sse_stream_holds_no_green_thread(start_server) -> None:
    per_stream = _held_per_idle_stream(_idle_server(start_server), "sse", sse_client)
    assert per_stream < IDLE_SSE_BOUND, f"{per_stream:.0f} bytes held per idle SSE stream"


@pytest.mark.skipif(takeover_off() is not None, reason=f"the take-over's own test: {takeover_off()}")
def test_an_idle_socketio_websocket_holds_no_green_thread(start_server) -> None:
    per_stream = _held_per_idle_stream(_idle_server(start_server), "socketio", websocket_client)
    assert per_stream < IDLE_SOCKETIO_BOUND, f"{per_stream:.0f} bytes held per idle Socket.IO websocket"
