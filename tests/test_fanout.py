"""Events written straight to the client sockets (fanout.py) against the real server (eventlet or gevent).

Framing at every size, order and completeness for readers that keep up, and a
reader that stops reading cut off (it resumes by event id) without slowing the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import time
from typing import Any

import pytest
import socketio
import websocket

from support import takeover_off, wait_for
from tasknotify.events import http_chunk
from tasknotify.live.takeover.fanout import LiveWebSocket, websocket_frame

socketio_takeover = pytest.mark.skipif(takeover_off() is not None,
                                       reason=f"the take-over's own tests: {takeover_off()}")
sse_takeover = pytest.mark.skipif(takeover_off("sse") is not None,
                                  reason=f"the take-over's own tests: {takeover_off('sse')}")

BIG = 10_000  # the largest description the API takes
# Beyond what the kernel buffers for one connection (tcp_wmem max 4 MB plus the reader's window).
FLOOD = 800


def post(server: Any, task_id: str, description: str = "") -> int:
    response = server.post("/update_task", {"task_id": task_id, "user_email": "test@example.com",
                                            "description": description})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


@socketio_takeover
def test_frame_encodings() -> None:
    assert http_chunk(b"id: 1\n\n") == b"7\r\nid: 1\n\n\r\n"
    assert websocket_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert websocket_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert websocket_frame(b"x" * 70_000)[:10] == b"\x81\x7f" + struct.pack("!Q", 70_000)
    abnf = websocket.ABNF  # websocket-client's own frame reader agrees
    frame = websocket_frame("42[\"é\"]".encode())
    reader = websocket._abnf.frame_buffer(io.BytesIO(frame).read, skip_utf8_validation=False)
    parsed = reader.recv_frame()
    assert parsed.opcode == abnf.OPCODE_TEXT and parsed.fin and parsed.data.decode() == "42[\"é\"]"


@socketio_takeover
def test_events_of_every_size_reach_both_transports_whole_and_in_order(live_server) -> None:
    sse = live_server.sse("/task_updates")
    sio = live_server.socketio()
    sizes = [0, 1, 100, 126, 1000, 5000, BIG, 3]
    ids = [post(live_server, f"size-{n}", "d" * size) for n, size in enumerate(sizes)]
    sse.wait_for_events(len(ids))
    sio.wait_for_events(len(ids))
    assert sse.ids == ids and sio.ids == ids
    assert [len(e["task"]["description"]) for e in sse.events] == sizes
    assert [len(e["task"]["description"]) for e in sio.events] == sizes
    sse.close()
    sio.close()


def _read_chunks(data: bytes) -> list[bytes]:
    """The complete chunks of a chunked HTTP body, in order (a cut connection may end mid-chunk)."""
    chunks, at = [], 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return chunks
        size = int(data[at:end], 16)
        if size == 0 or len(data) < end + 2 + size + 2:
            return chunks
        chunks.append(data[end + 2:end + 2 + size])
        assert data[end + 2 + size:end + 4 + size] == b"\r\n", "a chunk must end with CRLF"
        at = end + 4 + size


def _flood_while_others_read(server: Any) -> list[int]:
    """Post FLOOD big events; an SSE and a Socket.IO reader that keep up get every one, in order."""
    sse, sio = server.sse("/task_updates"), server.socketio()
    ids = [post(server, f"flood-{n % 10}", "x" * BIG) for n in range(FLOOD)]
    sse.wait_for_events(FLOOD, 60)
    sio.wait_for_events(FLOOD, 60)
    assert sse.ids == ids and sio.ids == ids
    sse.close()
    sio.close()
    return ids


def _read_until_closed(read: Any, timeout: float) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            piece = read()
        except (ConnectionResetError, websocket.WebSocketConnectionClosedException):
            return data
        if not piece:
            return data
        data += piece
    raise AssertionError(f"the server did not cut the reader off within {timeout} s")


@sse_takeover
def test_an_sse_reader_that_stops_reading_is_cut_off_and_the_others_get_everything(start_server, smtp) -> None:
    server = start_server(STREAM_QUEUE_SIZE="20", **smtp.env)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(10)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(f"GET /task_updates?access_token={server.token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"retry:" not in head:
        head += stalled.recv(4096)
    ids = _flood_while_others_read(server)
    wait_for(lambda: "SSE stream ended: reader fell behind" in server.log(), 30, "the cut-off in the log")
    body = head.split(b"\r\n\r\n", 1)[1] + _read_until_closed(lambda: stalled.recv(65536), 30)
    frames = b"".join(_read_chunks(body)).split(b"\n\n")
    seen = [int(f.split(b"\n")[0][4:]) for f in frames if f.startswith(b"id: ") and b"\ndata: " in f]
    assert 0 < len(seen) < FLOOD
    assert seen == ids[:len(seen)], "what the cut reader got is a gapless, duplicate-free start of the stream"
    stalled.close()


@socketio_takeover
def test_a_socketio_reader_that_stops_reading_is_cut_off_and_the_others_get_everything(start_server, smtp) -> None:
    server = start_server(STREAM_QUEUE_SIZE="20", **smtp.env)
    stalled = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket", timeout=10,
        sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    assert stalled.recv().startswith("0{")  # Engine.IO open
    stalled.send("40" + json.dumps({"token": server.token}))
    assert stalled.recv().startswith("40{")  # Socket.IO connect accepted
    ids = _flood_while_others_read(server)
    wait_for(lambda: "events behind" in server.log(), 30, "the cut-off in the log")
    seen: list[int] = []

    def read() -> bytes:
        message = stalled.recv()
        if message.startswith('42["task_update",'):
            seen.append(json.loads(message[2:])[1]["id"])
        return b"." if message else b""

    _read_until_closed(read, 30)
    assert 0 < len(seen) < FLOOD
    assert seen == ids[:len(seen)], "what the cut reader got is a gapless, duplicate-free start of the stream"


@sse_takeover
def test_an_http_1_0_stream_is_not_chunked(live_server) -> None:
    """eventlet chunks only HTTP/1.1 responses: events written past it must be framed as it frames the rest."""
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        sock.sendall(f"GET /task_updates?access_token={live_server.token} HTTP/1.0\r\n\r\n".encode())
        received = b""
        while b"retry:" not in received:
            received += sock.recv(4096)
        event_id = post(live_server, "old-client")
        while f"id: {event_id}\ndata: ".encode() not in received:
            received += sock.recv(4096)
    head, body = received.split(b"\r\n\r\n", 1)
    assert b"chunked" not in head.lower()
    assert body.startswith(b"retry: ") and b"\r\n" not in body


def _healthz_streams(server: Any) -> dict[str, int]:
    return server.get("/healthz").json()["streams"]


@socketio_takeover
def test_a_client_that_starts_on_long_polling_upgrades_and_keeps_every_feature(live_server) -> None:
    """socket.io-client's default: long-polling first, then the websocket, which the server takes over."""
    client, events = socketio.Client(reconnection=False), []
    client.on("task_update", events.append)
    client.connect(live_server.url, auth={"token": live_server.token}, transports=["polling", "websocket"],
                   wait_timeout=10)
    wait_for(lambda: client.transport() == "websocket", 10, "the upgrade to websocket")
    assert client.call("subscribe", {"task_id": "up-1"}, timeout=10)["subscriptions"] == ["up-1"]
    post(live_server, "up-other")
    event_id = post(live_server, "up-1")
    wait_for(lambda: [e["id"] for e in events] == [event_id], 10, "the subscribed task's event only")
    client.disconnect()
    wait_for(lambda: _healthz_streams(live_server)["socketio"] == 0, 10, "the connection to be freed")


@socketio_takeover
@pytest.mark.serial
def test_pings_keep_to_the_ping_interval_and_pongs_are_answered_where_they_are_read(start_server) -> None:
    # Pings go out from a heap read every 0.1 s; read once a second, the 1 s interval
    # stretched to 1.25-2 s, and a second's pings went out at once.
    server = start_server(SOCKETIO_PING_INTERVAL="1", SOCKETIO_PING_TIMEOUT="5")
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=10)
    assert ws.recv().startswith("0{")
    ws.send("40" + json.dumps({"token": server.token}))
    assert ws.recv().startswith("40{")
    assert ws.recv().startswith('42["stream_start",')
    pinged = []
    for _ in range(6):
        assert ws.recv() == "2"
        pinged.append(time.monotonic())
        ws.send("3")
    gaps = [b - a for a, b in zip(pinged, pinged[1:], strict=False)]
    assert sum(gaps) / len(gaps) < 1.2, gaps  # 0.75 to 1 s each, plus at most a tick
    assert _healthz_streams(server)["socketio"] == 1
    ws.close()


def _client_frame(text: str) -> bytes:
    """A masked text frame, as a websocket client sends it (short payloads only)."""
    mask = b"\x01\x02\x03\x04"
    payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(text.encode()))
    return bytes([0x81, 0x80 | len(payload)]) + mask + payload


@socketio_takeover
def test_a_pong_is_handed_to_engineio_where_it_is_read() -> None:
    class Owner:
        max_message = 1000

    class EngineIOSocket:
        pinged = 0

        def schedule_ping(self) -> None:  # all Engine.IO does with a pong
            self.pinged += 1

    eio_socket = EngineIOSocket()
    ours, theirs = socket.socketpair()
    try:
        connection = LiveWebSocket(Owner(), eio_socket, ours, 10)
        connection.received(_client_frame("3") + _client_frame("3"))
        assert eio_socket.pinged == 2  # no green thread started for them, nothing left waiting
        assert not connection._inbox and not connection._handing
    finally:
        ours.close()
        theirs.close()


@socketio_takeover
def test_live_streams_leave_the_servers_handlers_free_and_are_capped(start_server) -> None:
    """Streams taken over leave eventlet's MAX_CONNECTIONS handlers to requests, and are at most as many."""
    server = start_server(MAX_CONNECTIONS="4")
    streams = [server.sse("/task_updates") for _ in range(2)] + [server.socketio() for _ in range(2)]
    wait_for(lambda: _healthz_streams(server) == {"sse": 2, "socketio": 2}, 10, "four open streams")
    event_id = post(server, "slots")  # a fifth connection, served although four streams are open
    full = server.get("/task_updates", stream=True)
    assert full.status_code == 503 and full.json()["error"]["code"] == "unavailable"
    assert int(full.headers["Retry-After"]) > 0
    assert "503" in server.get("/openapi.json").json()["paths"]["/task_updates"]["get"]["responses"]
    refused, reasons = socketio.Client(reconnection=False), []
    refused.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(server.url, auth={"token": server.token}, transports=["websocket"], wait_timeout=5)
    wait_for(lambda: reasons, 10, "the refusal")
    assert reasons[0]["data"] == {"code": "unavailable"}
    for stream in streams:
        stream.wait_for_events(1)
        assert stream.ids == [event_id]
        stream.close()
    wait_for(lambda: _healthz_streams(server) == {"sse": 0, "socketio": 0}, 10, "the streams to be freed")
    server.sse("/task_updates").close()  # room again


@socketio_takeover
def test_a_client_sending_nonsense_over_its_websocket_harms_no_one(live_server) -> None:
    """Unknown Engine.IO packets are ignored, as Engine.IO does; an unreadable one ends only that connection."""
    def opened() -> Any:
        ws = websocket.create_connection(f"ws://127.0.0.1:{live_server.port}/socket.io/?EIO=4&transport=websocket",
                                         timeout=10)
        assert ws.recv().startswith("0{")  # Engine.IO open
        ws.send("40" + json.dumps({"token": live_server.token}))
        assert ws.recv().startswith("40{")  # Socket.IO connect accepted
        assert ws.recv().startswith('42["stream_start",')
        return ws

    odd, broken, unparsable, bystander = opened(), opened(), opened(), live_server.socketio()
    odd.send("9whatever")  # no such Engine.IO packet type: ignored
    broken.send("xyz")  # not an Engine.IO packet at all: the connection ends, with a close frame (1002)
    opcode, data = broken.recv_data(control_frame=True)
    assert (opcode, struct.unpack("!H", data[:2])[0]) == (websocket.ABNF.OPCODE_CLOSE, 1002)
    broken.shutdown()
    unparsable.send("42[unclosed")  # a Socket.IO event that is not JSON: that connection ends
    with contextlib.suppress(websocket.WebSocketConnectionClosedException):
        while message := unparsable.recv():  # "" once the close frame came
            assert not message.startswith("42"), message
    assert not unparsable.connected
    unparsable.close()
    event_id = post(live_server, "nonsense")
    assert json.loads(odd.recv()[2:])[1]["id"] == event_id
    bystander.wait_for_events(1)
    assert bystander.ids == [event_id]
    odd.close()
    bystander.close()
