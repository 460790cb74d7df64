"""Socket.IO `task_update` events from the real eventlet server, over websocket."""

from __future__ import annotations

import pytest
import socketio

from support import wait_for


def post(server, task_id: str, **fields) -> int:
    response = server.post("/update_task", {"task_id": task_id, "user_email": "test@example.com", **fields})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def test_every_event_once_in_order_same_payload_as_sse(live_server):
    sio = live_server.socketio()
    sse = live_server.sse("/task_updates")
    ids = [post(live_server, str(n % 4), title=f"n{n}") for n in range(20)]
    sio.wait_for_events(20)
    sse.wait_for_events(20)
    assert sio.ids == ids
    assert sio.events == sse.events  # one payload for every transport
    history = live_server.get("/tasks/1/events").json()["events"]
    assert history == [e for e in sio.events if e["task_id"] == "1"]
    sio.close()
    sse.close()


def test_connect_with_last_event_id_replays_then_goes_live(live_server):
    first = [post(live_server, "x", title=str(n)) for n in range(6)]
    sio = live_server.socketio(auth={"last_event_id": first[2]})
    sio.wait_for_events(3)
    later = [post(live_server, "x", title=f"later {n}") for n in range(4)]
    sio.wait_for_events(7)
    assert sio.ids == first[3:] + later
    sio.close()


def test_replay_during_publishing_has_no_gap_or_duplicate(live_server):
    import threading

    base = post(live_server, "busy")
    for n in range(200):
        post(live_server, "busy", title=str(n))
    posted: list[int] = []

    def keep_posting() -> None:
        for _ in range(80):
            posted.append(post(live_server, "busy", title="during"))

    writer = threading.Thread(target=keep_posting)
    writer.start()
    wait_for(lambda: len(posted) >= 5)
    sio = live_server.socketio(auth={"last_event_id": base})
    writer.join()
    last = posted[-1]
    wait_for(lambda: sio.ids and sio.ids[-1] == last, 20, "the last posted event")
    assert sio.ids == list(range(base + 1, last + 1))
    sio.close()


def test_subscribe_and_unsubscribe_are_acknowledged_and_filter(live_server):
    sio = live_server.socketio()
    assert sio.call("subscribe", {"task_id": "a"}) == {"ok": True, "task_id": "a", "subscriptions": ["a"]}
    assert sio.call("subscribe", {"task_id": "b"})["subscriptions"] == ["a", "b"]
    ids = {t: post(live_server, t) for t in "abc"}
    sio.wait_for_events(2)
    assert sio.call("unsubscribe", {"task_id": "a"}) == {"ok": True, "task_id": "a", "subscriptions": ["b"]}
    post(live_server, "a")
    b2 = post(live_server, "b")
    sio.wait_for_events(3)
    assert sio.ids == [ids["a"], ids["b"], b2]
    # With no subscription left the client watches every task again.
    assert sio.call("unsubscribe", {"task_id": "b"})["subscriptions"] == []
    c2 = post(live_server, "c")
    sio.wait_for_events(4)
    assert sio.ids[-1] == c2
    bad = sio.call("subscribe", {"task_id": "no spaces"})
    assert bad["ok"] is False and "task_id" in bad["error"]
    assert sio.call("subscribe", "nonsense")["ok"] is False
    sio.close()


def test_invalid_last_event_id_refuses_the_connection(live_server):
    client = socketio.Client(reconnection=False)
    reasons = []
    client.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(live_server.url, auth={"last_event_id": "yesterday", "token": live_server.token},
                       transports=["websocket"], wait_timeout=5)
    wait_for(lambda: reasons)
    assert "last_event_id" in reasons[0]["message"] and reasons[0]["data"] == {"code": "validation_failed"}


def test_clients_are_counted_and_freed(live_server):
    clients = [live_server.socketio() for _ in range(3)]
    wait_for(lambda: live_server.get("/healthz").json()["streams"]["socketio"] == 3)
    for client in clients:
        client.close()
    wait_for(lambda: live_server.get("/healthz").json()["streams"]["socketio"] == 0)


def test_a_client_that_saw_no_event_resumes_from_its_starting_id(live_server):
    """The first event of a connection is stream_start: where it starts, before any task_update."""
    before = post(live_server, "s", title="before")
    client = socketio.Client(reconnection=False)
    received: list[tuple[str, dict]] = []
    client.on("stream_start", lambda data: received.append(("stream_start", data)))
    client.on("task_update", lambda data: received.append(("task_update", data)))
    client.connect(live_server.url, auth={"token": live_server.token}, transports=["websocket"], wait_timeout=10)
    wait_for(lambda: received, 10, "stream_start")
    assert received == [("stream_start", {"last_event_id": before})]
    client.disconnect()
    missed = [post(live_server, "s", title="while away") for _ in range(3)]
    again = live_server.socketio(auth={"last_event_id": received[0][1]["last_event_id"]})
    again.wait_for_events(3)
    assert again.ids == missed
    resumed = socketio.Client(reconnection=False)
    starts: list[dict] = []
    resumed.on("stream_start", starts.append)
    resumed.connect(live_server.url, auth={"token": live_server.token, "last_event_id": missed[0]},
                    transports=["websocket"], wait_timeout=10)
    wait_for(lambda: starts, 10, "stream_start")
    assert starts == [{"last_event_id": missed[0]}]  # a resuming client's start is its own id
    resumed.disconnect()
    again.close()
