"""The HTTP server of `python app.py` against hostile clients: slow heads, idle connections, malformed requests.

Every test talks to the real server (eventlet, or gevent with TEST_ASYNC_MODE=gevent) over raw sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests
import socketio

from support import ROOT, free_port, refused_start, settings_error, wait_for

HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
ASYNC_MODE = os.environ.get("TEST_ASYNC_MODE", "eventlet")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    rest: bytes = b""  # what came after the first response, until the server closed
    closed: bool = True

    def error(self) -> dict:
        assert self.headers.get("content-type") == "application/json", self.headers
        body = json.loads(self.body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert body["error"]["details"] == []
        return body["error"]


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (a reset after data counts as the close)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def parse(data: bytes) -> Answer:
    """The first HTTP response in data (with a Content-Length body) and what follows it."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = (lines[0].split(" ", 2) + [""])[:3]
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Answer(int(status), headers, rest[:length], rest[length:])


def exchange(port: int, request: bytes, timeout: float = 15.0) -> Answer:
    """Send request whole, read until the server closes, and parse the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all; the answer is still there
        return parse(read_all(sock, timeout))


def read_response(sock: socket.socket, timeout: float = 10.0, pending: bytes = b"") -> Answer:
    """One response from a connection that stays open; pending: what was read past the previous one (its rest)."""
    sock.settimeout(timeout)
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    answer = parse(data)
    while len(answer.body) < int(answer.headers.get("content-length", "0")):
        data += sock.recv(65536)
        answer = parse(data)
    answer.closed = False
    return answer


@dataclass
class SlowClients:
    """Connections that send a partial request head, then one more header byte every `every` seconds."""

    port: int
    count: int
    every: float = 0.3
    sockets: list[socket.socket] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> SlowClients:
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.sendall(HEAD + b"X-Slow: ")
            self.sockets.append(sock)
        threading.Thread(target=self._trickle, daemon=True).start()
        return self

    def _trickle(self) -> None:
        live = list(self.sockets)
        while live and not self.stopping.wait(self.every):
            for sock in list(live):
                try:
                    sock.send(b"a")
                except OSError:  # dropped by the server
                    live.remove(sock)

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        for sock in self.sockets:
            sock.close()


# -- slow heads, idle connections --------------------------------------------------


@pytest.mark.serial
def test_a_flood_of_slow_heads_does_not_keep_others_out(start_server):
    """More connections trickling their headers than MAX_CONNECTIONS: /healthz is answered after the header timeout."""
    timeout = 2.0
    server = start_server(MAX_CONNECTIONS="10", HEADER_TIMEOUT_SECONDS=str(timeout), NOTIFY_WORKERS="1")
    with SlowClients(server.port, count=15):
        started = time.monotonic()
        answer = requests.get(server.url + "/healthz", timeout=(5, timeout + 15))
        elapsed = time.monotonic() - started
    assert answer.status_code == 200
    assert elapsed < timeout + 10, f"/healthz took {elapsed:.1f}s"


def _connect_all(port: int, count: int, timeout: float) -> tuple[list[socket.socket], int]:
    """Open count connections, each given timeout to be accepted by the kernel: the open ones, how many timed out."""
    opened, timed_out = [], 0
    for _ in range(count):
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        except TimeoutError:
            timed_out += 1
            break
    return opened, timed_out


@pytest.mark.serial
def test_a_burst_of_connections_waits_in_the_listening_queue_not_in_tcp_retransmissions(start_server):
    """Clients that connect while the server cannot accept them (every browser back after a restart) are queued by
    the kernel up to the listening backlog, by default the system's maximum; past it, their SYNs are dropped."""
    server = start_server(NOTIFY_WORKERS="1")
    short = start_server(NOTIFY_WORKERS="1", LISTEN_BACKLOG="50")
    burst = 300
    for each in (server, short):
        each.process.send_signal(signal.SIGSTOP)  # it accepts nothing: every connection waits in the queue
    try:
        queued, timed_out = _connect_all(server.port, burst, timeout=5)
        assert (len(queued), timed_out) == (burst, 0)
        overflowed, short_timed_out = _connect_all(short.port, burst, timeout=2)
        assert short_timed_out == 1 and len(overflowed) < burst, "a backlog of 50 should have overflowed"
    finally:
        for each in (server, short):
            each.process.send_signal(signal.SIGCONT)
    for sock in queued:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    for sock in queued:
        assert parse(read_all(sock, 30)).status == 200
        sock.close()
    for sock in overflowed:
        sock.close()


def test_a_second_server_on_a_port_in_use_stops_with_one_line_and_the_first_keeps_every_connection(
        start_server, tmp_path):
    """eventlet.listen sets SO_REUSEPORT by default: a second server would share the port's connections at random,
    with a broker of its own, so a stream and the write it waits for could land in different processes."""
    first = start_server(NOTIFY_WORKERS="1")
    env = {**os.environ, **first.env, "PORT": str(first.port), "HOST": "127.0.0.1",
           "INSTANCE_PATH": str(tmp_path / "second")}
    second = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and lines[-1] == f"cannot listen on 127.0.0.1:{first.port}: Address already in use", (
        second.stderr[-2000:])
    assert "Traceback" not in second.stderr
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{first.port}"], capture_output=True, text=True, check=True)
    assert len(listening.stdout.strip().splitlines()) == 1, listening.stdout
    assert requests.get(first.url + "/healthz", timeout=10).status_code == 200


def test_the_listening_backlog_is_a_setting(start_server):
    server = start_server(NOTIFY_WORKERS="1", LISTEN_BACKLOG="123")
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{server.port}"], capture_output=True, text=True, check=True)
    # ss shows a listening socket's backlog as its Send-Q: State Recv-Q Send-Q Local-Address Peer-Address
    assert listening.stdout.split()[2] == "123", listening.stdout


@pytest.mark.serial
def test_a_head_that_does_not_arrive_in_time_gets_408_and_is_closed(start_server):
    timeout = 1.5
    server = start_server(HEADER_TIMEOUT_SECONDS=str(timeout), NOTIFY_WORKERS="1")
    with SlowClients(server.port, count=1, every=0.2) as slow:
        started = time.monotonic()
        data = read_all(slow.sockets[0], timeout + 15)
        elapsed = time.monotonic() - started
    answer = parse(data)
    assert answer.status == 408 and answer.error()["code"] == "request_timeout"
    assert answer.headers.get("connection") == "close"
    assert timeout - 0.5 < elapsed < timeout + 10, f"closed after {elapsed:.1f}s"


@pytest.mark.serial
def test_a_connection_that_sends_nothing_is_closed_without_an_answer(start_server):
    timeout = 1.5
    server = start_server(HEADER_TIMEOUT_SECONDS=str(timeout), NOTIFY_WORKERS="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        data = read_all(sock, timeout + 15)
        elapsed = time.monotonic() - started
    assert data == b""
    assert timeout - 0.5 < elapsed < timeout + 10, f"closed after {elapsed:.1f}s"


@pytest.mark.serial
def test_an_idle_keep_alive_connection_is_closed_after_the_idle_limit(start_server):
    """Between requests a connection may idle longer than the header timeout, up to KEEPALIVE_IDLE_SECONDS."""
    idle = 6.0  # well above the 1.5 s the client idles: a loaded machine may be slow to read and send
    server = start_server(HEADER_TIMEOUT_SECONDS="1", KEEPALIVE_IDLE_SECONDS=str(idle), NOTIFY_WORKERS="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(HEAD + b"\r\n" + HEAD + b"\r\n")  # two pipelined requests
        first = read_response(sock)
        assert first.status == 200
        # Both answers may come in one read: the second starts in what the first left.
        assert read_response(sock, pending=first.rest).status == 200
        time.sleep(1.5)  # the client idles: longer than the header timeout, shorter than the idle limit
        sock.sendall(HEAD + b"\r\n")
        assert read_response(sock).status == 200
        started = time.monotonic()
        data = read_all(sock, idle + 15)
        elapsed = time.monotonic() - started
    assert data == b""
    assert idle - 0.5 < elapsed < idle + 10, f"closed after {elapsed:.1f}s"


@pytest.mark.parametrize("direct_writes", ["1", "0"])
def test_streams_and_long_polls_outlive_the_header_timeout(start_server, direct_writes):
    """SSE, a Socket.IO websocket and a Socket.IO long poll, idle for longer than both timeouts, stay open."""
    server = start_server(HEADER_TIMEOUT_SECONDS="1", KEEPALIVE_IDLE_SECONDS="1", SSE_HEARTBEAT_SECONDS="60",
                          SOCKETIO_PING_INTERVAL="3", SOCKETIO_PING_TIMEOUT="5", DIRECT_WRITES=direct_writes,
                          NOTIFY_WORKERS="1")
    sse = server.sse()
    websocket = server.socketio()
    polling_events: list[dict] = []
    polling = socketio.Client(reconnection=False)
    polling.on("task_update", polling_events.append)
    polling.connect(server.url, auth={"token": server.token}, transports=["polling"], wait_timeout=10)
    try:
        time.sleep(4)  # every client idles: past both timeouts, and one long poll lasts a whole ping interval
        assert not sse.closed.is_set() and websocket.client.connected and polling.connected
        assert server.post("/update_task", {"task_id": "t1", "user_email": "a@example.com"}).status_code == 200
        assert sse.wait_for_events(1)[0]["task_id"] == "t1"
        assert websocket.wait_for_events(1)[0]["task_id"] == "t1"
        wait_for(lambda: polling_events, 10, "the event over long-polling")
    finally:
        polling.disconnect()
        websocket.close()
        sse.close()


# -- answers the server writes itself --------------------------------------------------


def headers(count: int, size: int) -> bytes:
    return b"".join(b"X-%d: %s\r\n" % (i, b"a" * size) for i in range(count))


REFUSED = {
    "request line too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    "header line too long": (HEAD + headers(1, 9000) + b"\r\n", 431, "headers_too_large"),
    "headers too large": (HEAD + headers(12, 7000) + b"\r\n", 431, "headers_too_large"),
    "too many headers": (HEAD + headers(120, 1) + b"\r\n", 431, "headers_too_large"),
    "malformed version": (b"GET /healthz HTTP/x.y\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "HTTP/2.0": (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    "four words": (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "one word": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "HTTP/0.9 POST": (b"POST /update_task\r\n\r\n", 400, "bad_request"),
    "negative Content-Length": (b"POST /update_task HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400,
                                "bad_request"),
    "Content-Length not a number": (b"POST /update_task HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n", 400,
                                    "bad_request"),
    "two Content-Lengths": (b"POST /update_task HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 0\r\n"
                            b"\r\n{}", 400, "bad_request"),
    "Content-Length and Transfer-Encoding": (
        b"POST /update_task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    "a transfer coding other than chunked": (
        b"POST /update_task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n"
        b"GET /tasks HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
    "chunked after another coding": (
        b"POST /update_task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "not_implemented"),
    "two Transfer-Encoding headers": (
        b"POST /update_task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 501, "not_implemented"),
}


def test_requests_the_server_refuses_itself_get_the_json_error_shape(live_server, subtests):
    for case, (request, status, code) in REFUSED.items():
        with subtests.test(case):
            answer = exchange(live_server.port, request)
            assert answer.status == status, (answer.status, answer.body)
            assert answer.error()["code"] == code
            assert answer.headers.get("connection") == "close"
            assert answer.rest == b""  # nothing after it: the connection is closed


def test_a_refused_head_request_gets_no_body(live_server):
    answer = exchange(live_server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n" + headers(120, 1) + b"\r\n")
    assert answer.status == 431 and answer.headers.get("content-type") == "application/json"
    assert answer.body == b"" and answer.rest == b""


def test_a_bad_websocket_handshake_gets_the_json_error_shape(live_server, subtests):
    for handshake in (b"Sec-WebSocket-Version: 99\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!!\r\n",
                      b"Sec-WebSocket-Version: 13\r\n"):
        with subtests.test(handshake=handshake), socket.create_connection(("127.0.0.1", live_server.port),
                                                                           timeout=10) as sock:
            sock.sendall(HEAD + b"Upgrade: websocket\r\nConnection: Upgrade\r\n" + handshake + b"\r\n")
            answer = read_response(sock)
            assert answer.status in (400, 426), (answer.status, answer.body)
            assert answer.error()["code"] in ("bad_request", "upgrade_required")


# The guarded server with an app whose streamed body fails before its first byte (nothing in the service does).
FAILING_APP_SERVER = """
import sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "eventlet":
    import eventlet
    eventlet.monkey_patch()
else:
    from gevent import monkey
    monkey.patch_all()
from tasknotify.live.takeover import httpserver

def app(environ, start_response):
    def body():
        raise RuntimeError("internal-7f3a9c")
        yield b""
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    return body()

httpserver.serve(app, httpserver.listen("127.0.0.1", port), mode, max_connections=10,
                 limits=httpserver.Limits(10, 75))
"""


def test_an_error_escaping_the_app_is_answered_without_its_traceback(tmp_path):
    """gevent answers with the JSON shape; eventlet writes this 500 itself, with an empty body (httpserver.py)."""
    port = free_port()
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", FAILING_APP_SERVER, ASYNC_MODE, str(port)], cwd=ROOT,
                                   stdout=log, stderr=log)
    try:
        def listening() -> bool:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 30, "the server to listen")
        answer = exchange(port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        process.kill()
        process.wait()
    assert answer.status == 500
    assert b"internal-7f3a9c" not in answer.body and b"Traceback" not in answer.body
    if ASYNC_MODE == "gevent":
        assert answer.error()["code"] == "internal_error"
    else:
        assert answer.body == b""


# `python app.py` whose import of the service (tasknotify.factory) waits until the file IMPORT_GATE exists.
GATED_START = """
import importlib.abc, os, runpy, sys, time
gate = os.environ["IMPORT_GATE"]

class Gate(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tasknotify.factory":
            print("importing the service", file=sys.stderr, flush=True)
            while not os.path.exists(gate):
                time.sleep(0.02)
        return None

sys.meta_path.insert(0, Gate())
sys.path.insert(0, os.getcwd())
runpy.run_path("app.py", run_name="__main__")
"""


def test_a_client_of_a_starting_server_waits_in_the_listening_queue_and_is_answered(tmp_path):
    """The port listens before the service is imported (launch.py): a client of a restart is not refused."""
    port, gate, log_path = free_port(), tmp_path / "go", tmp_path / "server.log"
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "ASYNC_MODE": ASYNC_MODE, "IMPORT_GATE": str(gate),
           "INSTANCE_PATH": str(tmp_path / "instance"), "NOTIFY_WORKERS": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", GATED_START], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        def connected() -> socket.socket | None:
            assert process.poll() is None, log_path.read_text()
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                return None

        with wait_for(connected, 30, "the port to listen while the service is not imported yet") as sock:
            wait_for(lambda: "importing the service" in log_path.read_text(), 30, "the import of the service to wait")
            sock.sendall(HEAD + b"\r\n")
            gate.touch()
            assert read_response(sock, timeout=60).status == 200
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("name, value", [("HEADER_TIMEOUT_SECONDS", "0"), ("KEEPALIVE_IDLE_SECONDS", "soon"),
                                         ("LISTEN_BACKLOG", "-1"), ("LISTEN_BACKLOG", "1e9"),
                                         ("SSE_RETRY_SPREAD_MS", "-5"), ("SSE_RETRY_SPREAD_MS", "many")])
def test_a_bad_server_setting_is_refused_by_name_and_value(name, value):
    assert settings_error(**{name: value}).startswith(f"invalid value for {name}: {value!r}")


def test_a_bad_server_setting_stops_the_server_with_one_line(tmp_path):
    assert refused_start(tmp_path, LISTEN_BACKLOG="1e9").startswith(
        "configuration: invalid value for LISTEN_BACKLOG: '1e9'")


def test_gevent_connections_send_without_waiting_for_acks() -> None:
    """gevent writes an answer's head and body in two sends; with Nagle's algorithm on, the body waited 40 ms
    for the client's delayed ACK on every kept-alive request. The handler turns it off for each connection."""
    from gevent import pywsgi

    from tasknotify.live.takeover import httpserver

    seen: list[int] = []

    for guards in (True, False):
        class Probe(httpserver.gevent_handler(httpserver.Limits(1.0, 1.0), guards=guards)):  # type: ignore[misc]
            def handle_one_request(self) -> None:
                seen.append(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            connection, address = listener.accept()
            assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            Probe(connection, address, pywsgi.WSGIServer(listener, lambda environ, start_response: [])).handle()
            client.close()
    assert seen and all(seen), seen
