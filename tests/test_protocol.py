"""Engine.IO over websocket at the protocol level, against the real server: heartbeats, upgrades, close frames.

Raw websocket clients (websocket-client) speak Engine.IO by hand, so that what
the server writes (pings, close frames and their status codes) can be read and
timed. Most tests run on both paths: the connections taken over from the server
(fanout.py, DIRECT_WRITES=1) and stock python-engineio (DIRECT_WRITES=0), which
they must match.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests
import websocket

from support import ROOT, on_fallback, takeover_off, wait_for

ASYNC_MODE = os.environ.get("TEST_ASYNC_MODE", "eventlet")
TAKEN_OVER = pytest.param("1", id="taken-over", marks=pytest.mark.skipif(
    on_fallback("takeover" if ASYNC_MODE == "eventlet" else "gevent-takeover"),
    reason="SELF_CHECK_FAIL puts the take-over on its fallback: the stock path"))
BOTH_PATHS = pytest.mark.parametrize("direct_writes", [TAKEN_OVER, pytest.param("0", id="stock")])
# Where the stock path compared with is eventlet's websocket: under gevent, the take-over's alone.
STOCK_UNDER_EVENTLET = pytest.mark.parametrize("direct_writes", [TAKEN_OVER, pytest.param(
    "0", id="stock", marks=pytest.mark.skipif(ASYNC_MODE != "eventlet", reason="the stock path compared with is "
                                              "eventlet's websocket; gevent's is gevent-websocket's"))])

INTERVAL, TIMEOUT = 2, 1  # seconds: SOCKETIO_PING_INTERVAL, SOCKETIO_PING_TIMEOUT
# Silent clients, each timed: one dropped late by chance may pass, all of them hardly.
SILENT = 5


def ws_url(server: Any, sid: str | None = None) -> str:
    return f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket" + (f"&sid={sid}" if sid else "")


def open_websocket(server: Any) -> tuple[websocket.WebSocket, dict[str, Any]]:
    """A Socket.IO client over a raw websocket, connected: the socket and the Engine.IO handshake."""
    ws = websocket.create_connection(ws_url(server), timeout=10)
    opened = ws.recv()
    assert opened.startswith("0{"), opened
    ws.send("40" + json.dumps({"token": server.token}))
    assert ws.recv().startswith("40{")  # Socket.IO connect accepted
    assert ws.recv().startswith('42["stream_start",')
    return ws, json.loads(opened[1:])


def masked_frame(first_byte: int, payload: bytes) -> bytes:
    """A client's frame (masked, payload under 126 bytes) with the given first byte (FIN, RSV, opcode)."""
    mask = b"\x0f\x1e\x2d\x3c"
    return bytes([first_byte, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def socketio_streams(server: Any) -> int:
    return server.get("/healthz").json()["streams"]["socketio"]


class RawClient(threading.Thread):
    """A raw client in a thread: it answers pings (or, once told to, stops) and notes when each came."""

    def __init__(self, server: Any) -> None:
        super().__init__(daemon=True)
        self.ws, _ = open_websocket(server)
        self.pings: list[float] = []
        self.pongs: list[float] = []
        self.answering = True
        self.closed: float | None = None
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                assert data in (b"2", b"1"), data  # pings, at most Engine.IO's close packet
                if data == b"2":
                    self.pings.append(time.monotonic())
                    if self.answering:
                        self.ws.send("3")
                        self.pongs.append(time.monotonic())
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            pass
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        self.closed = time.monotonic()

    def stop(self) -> None:
        self.stopping.set()
        self.ws.close()
        self.join(10)


def when_closed(ws: websocket.WebSocket, timeout: float) -> float:
    """When the server ended the connection (a close frame or the end of the stream); nothing else may come."""
    ws.settimeout(timeout)
    while True:
        try:
            opcode, data = ws.recv_data(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return time.monotonic()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return time.monotonic()
        assert data == b"1", data  # at most Engine.IO's close packet


# -- 14: the ping timeout ------------------------------------------------------------


@pytest.mark.serial
# Under gevent, python-engineio's service task drops a silent client up to a ping timeout late; the deadline
# kept to the tick is the take-over's (fanout.py).
@STOCK_UNDER_EVENTLET
def test_a_client_that_stops_answering_is_dropped_ping_timeout_after_the_ping_it_ignores(start_server,
                                                                                       direct_writes) -> None:
    """As Node and stock python-engineio: dropped pingTimeout after the unanswered ping; those that answer stay."""
    server = start_server(SOCKETIO_PING_INTERVAL=str(INTERVAL), SOCKETIO_PING_TIMEOUT=str(TIMEOUT),
                          DIRECT_WRITES=direct_writes)
    answering = RawClient(server)
    silent = [RawClient(server) for _ in range(SILENT)]
    for client in [answering, *silent]:
        client.start()
    for client in silent:  # each answers one ping, then no more
        wait_for(lambda client=client: client.pongs, INTERVAL + 5, "a first ping")
        client.answering = False
    for client in silent:
        wait_for(lambda client=client: client.closed, INTERVAL + TIMEOUT + 5, "the silent client to be dropped")
    lateness = [round(c.closed - c.pings[-1], 2) for c in silent]
    since_pong = [round(c.closed - c.pongs[-1], 2) for c in silent]
    assert all(len(c.pings) == 2 and c.error is None for c in silent), [(c.pings, c.error) for c in silent]
    # Pings may come up to a quarter of the interval early (fanout.py spreads them).
    assert all(TIMEOUT - 0.15 < late < TIMEOUT + 0.45 for late in lateness), (lateness, since_pong)
    assert all(INTERVAL * 0.75 + TIMEOUT - 0.15 < t < INTERVAL + TIMEOUT + 0.7 for t in since_pong), since_pong
    pings_before = len(answering.pings)
    wait_for(lambda: len(answering.pings) >= pings_before + 2, 3 * INTERVAL + TIMEOUT, "two more pings answered")
    assert answering.error is None and answering.closed is None
    wait_for(lambda: socketio_streams(server) == 1, 10, "the silent clients to be dropped, the other kept")
    answering.stop()


# -- 15: a malformed upgrade from long-polling --------------------------------------------


def polling_session(server: Any) -> str:
    """A Socket.IO client connected over long-polling: its Engine.IO session id."""
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    sid = json.loads(requests.get(base, timeout=10).text[1:])["sid"]
    assert requests.post(f"{base}&sid={sid}", data="40" + json.dumps({"token": server.token}), timeout=10).ok
    received = requests.get(f"{base}&sid={sid}", timeout=10).text
    assert received.startswith("40{")
    while '42["stream_start",' not in received:  # the connection's first event, in this poll or the next
        received = requests.get(f"{base}&sid={sid}", timeout=10).text
    return sid


def poll(server: Any, sid: str) -> str:
    answer = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}", timeout=15)
    assert answer.status_code == 200, answer.text
    return answer.text


def read_to_end(sock: socket.socket, timeout: float = 10) -> bytes:
    """What the server writes on a connection until it closes it."""
    sock.settimeout(timeout)
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def post_event(server: Any, task_id: str) -> int:
    answer = server.post("/update_task", {"task_id": task_id, "user_email": "test@example.com"})
    assert answer.status_code == 200, answer.text
    return answer.json()["event_id"]


# (the frame the client sends instead of the probe, or after it instead of the upgrade packet)
MALFORMED_UPGRADES = {
    "unreadable-probe": [masked_frame(0x81, b"xyz")],
    "empty-probe": [masked_frame(0x81, b"")],
    "binary-probe": [masked_frame(0x82, b"\x01\x02")],
    "probe-not-utf-8": [masked_frame(0x81, b"2\xff")],
    "upgrade-packet-unreadable": ["2probe", masked_frame(0x81, b"xyz")],
    "upgrade-packet-empty": ["2probe", masked_frame(0x81, b"")],
    "upgrade-packet-a-message": ["2probe", masked_frame(0x81, b"4hello")],
    "upgrade-packet-binary": ["2probe", masked_frame(0x82, b"\x05")],
}
# Stock python-engineio raises on these, and eventlet writes HTTP 500 and a traceback into the websocket:
# only the taken-over path is tried with them.
STOCK_RAISES = {"unreadable-probe", "empty-probe", "probe-not-utf-8", "upgrade-packet-unreadable",
                "upgrade-packet-empty"}


def after_malformed_upgrade(server: Any, frames: list[Any]) -> tuple[Any, Any]:
    """What a polling client sees after a malformed upgrade: on the websocket, then on its long-polling session."""
    sid = polling_session(server)
    ws = websocket.create_connection(ws_url(server, sid), timeout=10)
    *probe, sent = frames
    if probe:
        ws.send(probe[0])
        assert ws.recv() == "3probe"
    ws.sock.sendall(sent)
    written = read_to_end(ws.sock)
    ws.shutdown()  # the server has closed it: no closing handshake to wait for
    event_id = post_event(server, "after-upgrade")
    packets = poll(server, sid).split("\x1e")
    if packets == ["6"]:  # the NOOP that ends a poll in progress when the probe is answered
        packets += poll(server, sid).split("\x1e")
    events = [json.loads(p[2:])[1]["id"] for p in packets if p.startswith('42["task_update",')]
    # A close frame and nothing else; the session's next event, after at most one NOOP (not one on every poll).
    return ("close frame" if written[:1] == b"\x88" and b"HTTP/" not in written else written[:300],
            "polling goes on" if events == [event_id] and packets.count("6") <= 1 else packets)


@BOTH_PATHS
def test_packets_sent_right_after_the_upgrade_packet_are_all_handled(start_server, direct_writes) -> None:
    """Frames that come with the upgrade packet, which a server's buffered reader may have read already."""
    server = start_server(DIRECT_WRITES=direct_writes)
    ws = websocket.create_connection(ws_url(server, polling_session(server)), timeout=10)
    ws.send("2probe")
    assert ws.recv() == "3probe"
    ws.sock.sendall(masked_frame(0x81, b"5") + masked_frame(0x81, b'421["subscribe",{"task_id":"not an id"}]'))
    while (answer := ws.recv()) == "6":  # stock python-engineio may send the NOOP that ended no poll here
        pass
    assert answer.startswith("431["), answer  # the subscription's acknowledgement
    ws.close()


@STOCK_UNDER_EVENTLET
def test_a_malformed_upgrade_closes_the_websocket_and_the_session_goes_on_over_long_polling(
        start_server, direct_writes) -> None:
    """As stock python-engineio (where it does not raise) and Node: a close frame, the session left on polling."""
    server = start_server(DIRECT_WRITES=direct_writes)
    cases = [case for case in MALFORMED_UPGRADES if direct_writes == "1" or case not in STOCK_RAISES]
    seen = {case: after_malformed_upgrade(server, MALFORMED_UPGRADES[case]) for case in cases}
    assert seen == dict.fromkeys(cases, ("close frame", "polling goes on"))
    assert "Traceback" not in server.log()


@pytest.mark.serial
@STOCK_UNDER_EVENTLET
def test_a_websocket_that_sends_no_probe_is_closed_after_a_ping_interval_and_timeout(start_server,
                                                                                    direct_writes) -> None:
    """As stock python-engineio: the websocket of an upgrade waits that long for its probe, and no longer."""
    server = start_server(DIRECT_WRITES=direct_writes, SOCKETIO_PING_INTERVAL="1", SOCKETIO_PING_TIMEOUT="1")
    ws = websocket.create_connection(ws_url(server, polling_session(server)), timeout=10)
    opened = time.monotonic()
    written = read_to_end(ws.sock)
    assert written[:1] == b"\x88" and b"HTTP/" not in written, written[:300]
    assert time.monotonic() - opened < 2 + 1.5
    ws.shutdown()


# -- 16: close frames on protocol errors ---------------------------------------------------


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of the whole frames in what a server wrote (unmasked frames)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, length, at = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length, at = int.from_bytes(data[at:at + size], "big"), at + size
        if at + length > len(data):
            break
        frames.append((opcode, data[at:at + length]))
        at += length
    return frames


def close_code(ws: websocket.WebSocket) -> int | str | None:
    """The status code of the close frame the server writes, then closes (None: a close frame without one)."""
    ws.sock.settimeout(10)
    written = b""
    try:
        while piece := ws.sock.recv(65536):
            written += piece
    except ConnectionResetError:
        pass
    closes = [payload for opcode, payload in server_frames(written) if opcode == 0x8]
    if not closes:
        return f"no close frame: {written[:300]!r}"
    return struct.unpack("!H", closes[0][:2])[0] if len(closes[0]) >= 2 else None


# name -> (what the client sends, given the handshake; the close code expected)
PROTOCOL_ERRORS = {
    "unmasked-frame": (lambda _: b"\x81\x023x", 1002),
    "reserved-bits": (lambda _: masked_frame(0xC1, b"3"), 1002),
    "invalid-utf-8": (lambda _: masked_frame(0x81, b"4\xff"), 1007),
    "message-too-big": (lambda handshake: masked_frame(0x81, b"4")[:1] + b"\xff" + struct.pack(
        "!Q", handshake["maxPayload"] + 1) + b"\0\0\0\0" + b"4" * (handshake["maxPayload"] + 1), 1009),
    "message-too-big-in-pieces": (lambda handshake: masked_frame(0x01, b"4" * 100) + b"".join(
        masked_frame(0x00, b"x" * 100) for _ in range(handshake["maxPayload"] // 100)), 1009),
    "not-an-engineio-packet": (lambda _: masked_frame(0x81, b"xyz"), 1002),
}
# Where stock differs (only the taken-over path is tried with these):
STOCK_DIFFERS = {
    "invalid-utf-8": "eventlet answers invalid UTF-8 with 1011 (internal error), not RFC 6455's 1007",
    "message-too-big-in-pieces": "stock python-engineio checks the size of a whole message only, sending a close "
                                 "frame without a status",
    "not-an-engineio-packet": "stock python-engineio raises on it: eventlet answers HTTP 500 with a traceback",
}


@STOCK_UNDER_EVENTLET
def test_a_protocol_error_ends_the_websocket_with_a_close_frame_and_its_code(start_server, direct_writes) -> None:
    """1002 protocol error, 1007 invalid text, 1009 message too big: as eventlet's, simple-websocket's and Node's."""
    server = start_server(DIRECT_WRITES=direct_writes)
    bystander, _ = open_websocket(server)
    cases = [case for case in PROTOCOL_ERRORS if direct_writes == "1" or case not in STOCK_DIFFERS]
    seen = {}
    for case in cases:
        ws, handshake = open_websocket(server)
        ws.sock.sendall(PROTOCOL_ERRORS[case][0](handshake))
        seen[case] = close_code(ws)
        ws.shutdown()  # the server has closed it: no closing handshake to wait for
    assert seen == {case: PROTOCOL_ERRORS[case][1] for case in cases}
    wait_for(lambda: socketio_streams(server) == 1, 10, "the connections to be freed, the bystander's kept")
    event_id = post_event(server, "bystander")
    assert json.loads(bystander.recv()[2:])[1]["id"] == event_id
    bystander.close()
    assert "Traceback" not in server.log()


@pytest.mark.serial  # the server waits 2 s for the client's close frame (CLOSING_HANDSHAKE_SECONDS)
@pytest.mark.skipif(takeover_off() is not None, reason=f"the take-over's own test: {takeover_off()}")
def test_a_client_still_sending_when_its_websocket_is_closed_reads_the_close_frame_and_a_clean_end(
        start_server) -> None:
    """The server reads on until the client's own close frame: closed with unread input, it would reset the client.

    (eventlet's websocket, on the stock path, closes at once: such a client is reset.)
    """
    server = start_server()
    ws, _ = open_websocket(server)
    ws.sock.sendall(b"\x81\x023x" + masked_frame(0x81, b"4" + b"x" * 100) * 2000)  # unmasked: 1002, then more
    ws.sock.settimeout(10)
    written = b""
    while piece := ws.sock.recv(65536):  # a reset raises ConnectionResetError
        written += piece
    assert server_frames(written)[0][0] == 0x8
    ws.sock.sendall(masked_frame(0x88, struct.pack("!H", 1002)))  # the client's side of the closing handshake
    assert ws.sock.recv(65536) == b""
    ws.shutdown()


# -- 17: whole seconds for the ping settings ---------------------------------------------


def test_ping_settings_are_whole_seconds_and_a_fraction_stops_the_server(start_server, tmp_path) -> None:
    """python-engineio tells clients the ping interval cut to whole seconds: 1.5 would be announced as 1000 ms."""
    from tasknotify.config import load_config

    config = load_config({"SOCKETIO_PING_INTERVAL": "25.0", "SOCKETIO_PING_TIMEOUT": " 7 "})
    assert (config["SOCKETIO_PING_INTERVAL"], config["SOCKETIO_PING_TIMEOUT"]) == (25, 7)
    for name in ("SOCKETIO_PING_INTERVAL", "SOCKETIO_PING_TIMEOUT"):
        for value in ("1.5", "0.5", "0", "-2", "nan", "soon"):
            with pytest.raises(ValueError, match=f"^invalid value for {name}: '{value}' .*whole number of seconds"):
                load_config({name: value})
    refused = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "SOCKETIO_PING_INTERVAL": "1.5",
                                  "INSTANCE_PATH": str(tmp_path / "refused")})
    assert refused.returncode != 0
    assert "configuration: invalid value for SOCKETIO_PING_INTERVAL: '1.5' (expected a whole number" in refused.stderr
    assert "Traceback" not in refused.stderr
    server = start_server(SOCKETIO_PING_INTERVAL="3", SOCKETIO_PING_TIMEOUT="4")
    handshake = json.loads(requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling", timeout=10).text[1:])
    assert (handshake["pingInterval"], handshake["pingTimeout"]) == (3000, 4000)
