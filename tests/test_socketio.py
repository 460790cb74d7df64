"""Socket.IO `task_update` events from the real eventlet server, over websocket."""

from __future__ import annotations

import json

import pytest
import socketio
import websocket

from support import make_token, on_fallback, wait_for


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


# -- hostile clients -----------------------------------------------------------------

RESERVED_EVENTS = ("connect", "disconnect", "connect_error", "disconnecting", "newListener", "removeListener")


def _socketio_streams(server) -> int:
    return server.get("/healthz").json()["streams"]["socketio"]


def _stock_client(server, token: str) -> socketio.Client:
    """python-socketio's client as it comes (support's in-order client cannot take a server's disconnect)."""
    client = socketio.Client(reconnection=False)
    client.connect(server.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    return client


def _refused_reason(server, auth: dict) -> dict:
    """Connect with auth, which the server must refuse; the connect_error it gave."""
    client = socketio.Client(reconnection=False)
    reasons: list = []
    client.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.url, auth=auth, transports=["websocket"], wait_timeout=5)
    wait_for(lambda: reasons)
    return reasons[0]


@pytest.mark.parametrize("name", RESERVED_EVENTS)
def test_a_client_sent_reserved_event_ends_its_connection_and_counts_once(start_server, name):
    """Only real connects and disconnects count: one a client names itself ends that connection."""
    server = start_server(MAX_STREAMS_PER_USER="2")
    alice = make_token("alice@example.com", ("updates:read",))
    hostile, other = _stock_client(server, alice), server.socketio(token=alice)
    wait_for(lambda: _socketio_streams(server) == 2)
    # What a forged connect would need to take a second place: the arguments of a real one.
    hostile.emit(name, ({}, {"token": alice}) if name == "connect" else None)
    wait_for(lambda: not hostile.connected, 10, f"the server to end the connection that sent {name!r}")
    wait_for(lambda: _socketio_streams(server) == 1, 10, "the ended connection to be given back once")
    # The user's second place is free again, and only that one.
    again = server.socketio(token=alice)
    assert _refused_reason(server, {"token": alice})["data"] == {"code": "rate_limited"}
    event_id = post(server, "still-live", user_email="alice@example.com")
    other.wait_for_events(1)
    again.wait_for_events(1)
    assert other.ids == again.ids == [event_id]
    other.close()
    again.close()
    wait_for(lambda: _socketio_streams(server) == 0)
    if not (name == "disconnect" and on_fallback("connect-events")):  # there, every disconnect looks real
        # One line for the event a client sent, none for the real connects and disconnects.
        assert server.log().count("sent the reserved event") == 1
        assert f"sent the reserved event '{name}'" in server.log()
    assert "Traceback" not in server.log()


def test_a_raw_disconnect_event_packet_ends_the_connection_and_frees_its_place(start_server):
    """`42["disconnect"]` on the wire, as a hand-written client sends it: no event reaches it afterwards."""
    server = start_server(MAX_STREAMS_PER_USER="1")
    alice = make_token("alice@example.com", ("updates:read",))
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=10)
    assert ws.recv().startswith("0{")  # Engine.IO open
    ws.send("40" + json.dumps({"token": alice}))
    assert ws.recv().startswith("40{")  # Socket.IO connect accepted
    assert ws.recv().startswith('42["stream_start",')
    ws.send('42["disconnect"]')
    received = [ws.recv()]
    assert received[0] == "41", received  # Socket.IO disconnect of the namespace
    wait_for(lambda: _socketio_streams(server) == 0, 10, "the place to be given back")
    replacement = server.socketio(token=alice)  # the one place is free
    event_id = post(server, "after", user_email="alice@example.com")
    replacement.wait_for_events(1)
    assert replacement.ids == [event_id]
    ws.settimeout(0.5)
    with pytest.raises((websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException)):
        while message := ws.recv():
            assert not message.startswith("42"), f"an event reached the ended connection: {message}"
    ws.close()
    replacement.close()


def test_a_forged_connect_takes_no_place_and_logs_no_traceback(start_server):
    server = start_server(MAX_STREAMS_PER_USER="3")
    alice = make_token("alice@example.com", ("updates:read",))
    hostile = _stock_client(server, alice)
    hostile.emit("connect")  # no auth: the connect handler would refuse it with a traceback
    wait_for(lambda: not hostile.connected, 10, "the server to end the connection")
    clients = [server.socketio(token=alice) for _ in range(3)]  # all three places are free
    wait_for(lambda: _socketio_streams(server) == 3)
    assert "Traceback" not in server.log()
    for client in clients:
        client.close()


def test_last_event_id_in_auth_must_be_a_decimal_integer(live_server, subtests):
    for value in ("1_0", " 7 ", "7 ", "+5", "-1", "1.5", 1.5, 2.0, True, -1, "\u0663", "0x10", 2**63, str(2**63),
                  [1], {"id": 1}):
        with subtests.test(value=value):
            reason = _refused_reason(live_server, {"token": live_server.token, "last_event_id": value})
            assert reason["data"] == {"code": "validation_failed"}
            assert "last_event_id" in reason["message"] and "decimal" in reason["message"]


def test_last_event_id_in_auth_may_be_a_json_integer_or_digits(live_server):
    first = [post(live_server, "d") for _ in range(3)]
    as_number = live_server.socketio(auth={"last_event_id": first[0]})
    as_digits = live_server.socketio(auth={"last_event_id": f"00{first[0]}"})
    as_number.wait_for_events(2)
    as_digits.wait_for_events(2)
    assert as_number.ids == as_digits.ids == first[1:]
    as_number.close()
    as_digits.close()


def test_subscribe_refuses_what_is_not_a_task_id(live_server, subtests):
    sio = live_server.socketio()
    for task_id in (".", "..", "", "a/b", "x" * 65, 7, None):
        for event in ("subscribe", "unsubscribe"):
            with subtests.test(event=event, task_id=task_id):
                ack = sio.call(event, {"task_id": task_id})
                assert ack["ok"] is False and "task_id" in ack["error"], ack
    assert sio.call("subscribe", {"task_id": "..."})["subscriptions"] == ["..."]  # three dots are a name
    sio.close()


def test_subscriptions_per_connection_are_capped(start_server):
    server = start_server(MAX_SUBSCRIPTIONS_PER_CONNECTION="3")
    sio = server.socketio()
    for task_id, expected in (("c", ["c"]), ("a", ["c", "a"]), ("b", ["c", "a", "b"])):
        assert sio.call("subscribe", {"task_id": task_id}) == {"ok": True, "task_id": task_id,
                                                               "subscriptions": expected}
    refused = sio.call("subscribe", {"task_id": "d"})
    assert refused["ok"] is False and "at most 3 subscriptions" in refused["error"], refused
    # Nothing changed: a task already watched is still accepted, d is not watched.
    assert sio.call("subscribe", {"task_id": "a"})["subscriptions"] == ["c", "a", "b"]
    post(server, "d")
    watched = post(server, "a")
    sio.wait_for_events(1)
    assert sio.ids == [watched]
    assert sio.call("unsubscribe", {"task_id": "a"})["subscriptions"] == ["c", "b"]
    assert sio.call("subscribe", {"task_id": "d"})["subscriptions"] == ["c", "b", "d"]
    d_event = post(server, "d")
    sio.wait_for_events(2)
    assert sio.ids == [watched, d_event]
    sio.close()


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
