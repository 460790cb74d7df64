"""What docs/api.md tells client authors, tried with the clients it names against the real server."""

from __future__ import annotations

import json
import threading

import httpx
import socketio
from engineio.payload import Payload
from httpx_sse import connect_sse

from support import wait_for


def post(server, task_id: str) -> int:
    response = server.post("/update_task", {"task_id": task_id, "user_email": "test@example.com"})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def test_httpx_sse_hands_over_empty_blocks_which_the_documented_loop_skips(start_server, smtp):
    """The opening id block and the heartbeats come out of httpx-sse with empty data; the loop keeps the ids."""
    server = start_server(SSE_HEARTBEAT_SECONDS="0.3", **smtp.env)
    first = post(server, "before")
    events, empty, last_ids = [], [], []
    stop = threading.Event()

    def read() -> None:
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(timeout=httpx.Timeout(10.0)) as client, \
                connect_sse(client, "GET", server.url + "/task_updates", headers=headers) as source:
            for sse in source.iter_sse():  # the loop of docs/api.md
                if sse.id:
                    last_ids.append(int(sse.id))
                if not sse.data:
                    empty.append(sse)
                    continue
                events.append(json.loads(sse.data))
                if stop.is_set():
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: last_ids, 10, "the opening id block")
    assert last_ids[0] == first  # the stream's starting point, before any event arrived
    wait_for(lambda: len(empty) >= 3, 10, "heartbeats handed over as empty events")
    stop.set()
    later = post(server, "after")
    wait_for(lambda: events, 10, "the event")
    reader.join(10)
    assert [e["id"] for e in events] == [later] and last_ids[-1] == later


def test_python_socketio_over_polling_takes_a_long_replay_once_its_packet_limit_is_raised(live_server):
    """docs/api.md: Payload.max_decode_packets (16) bounds one polling response; raised, a replay of 60 arrives."""
    assert Payload.max_decode_packets == 16  # the limit the docs name
    ids = [post(live_server, f"t{n % 5}") for n in range(60)]
    received: list[int] = []
    client = socketio.Client(reconnection=False)
    client.on("task_update", lambda event: received.append(event["id"]))
    Payload.max_decode_packets = 10_000
    try:
        client.connect(live_server.url, auth={"token": live_server.token, "last_event_id": 0},
                       transports=["polling"], wait_timeout=10)
        wait_for(lambda: len(received) >= len(ids), 20, f"{len(ids)} replayed events over long-polling")
        assert received == ids
    finally:
        Payload.max_decode_packets = 16
        client.disconnect()
