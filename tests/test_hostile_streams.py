"""Hostile input to the streams and the REST API: event ids, task ids, the cost of a subscribe."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import pytest

from db import MAX_ID
from tasknotify import ids
from tasknotify.config import load_config
from tasknotify.errors import APIError
from tasknotify.live import streams
from tasknotify.tokens import Viewer

# -- event ids -----------------------------------------------------------------------------

BAD_EVENT_IDS: list[Any] = ["1_0", " 7 ", "7 ", "\t7", "7\n", "+5", "-1", "1.5", "1e3", "0x10", "\u0663", "\uff17",
                            "7 8", str(MAX_ID + 1), "9" * 5000, 1.5, 2.0, True, False, -1, MAX_ID + 1, [1], {"a": 1}]


@pytest.mark.parametrize("value", BAD_EVENT_IDS)
def test_parse_event_id_refuses_anything_but_a_decimal_integer(value):
    with pytest.raises(APIError) as refused:
        streams.parse_event_id(value, "last_event_id")
    assert refused.value.status == 422
    assert refused.value.details == [{"field": "last_event_id", "message": "not a non-negative decimal integer"}]


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("7", 7), ("007", 7), (str(MAX_ID), MAX_ID), (0, 0),
                                                 (42, 42), (MAX_ID, MAX_ID), (None, None), ("", None)])
def test_parse_event_id_accepts_decimal_integers(value, expected):
    assert streams.parse_event_id(value, "x") == expected


@pytest.mark.parametrize("value", ["1_0", " 7 ", "+5", "1.5", "-1", "\u0663", str(MAX_ID + 1)])
def test_the_history_api_parses_after_with_the_same_rule(client, value):
    client.post("/update_task", json={"task_id": "h", "user_email": "test@example.com"})
    response = client.get("/tasks/h/events", query_string={"after": value})
    assert response.status_code == 422, value
    assert response.get_json()["error"]["details"][0]["field"] == "after"


def test_the_history_api_pages_with_after(client):
    ids = [client.post("/update_task", json={"task_id": "h", "user_email": "test@example.com", "title": str(n)})
           .get_json()["event_id"] for n in range(3)]
    events = client.get(f"/tasks/h/events?after=0{ids[0]}").get_json()["events"]
    assert [e["id"] for e in events] == ids[1:]


# -- task ids ------------------------------------------------------------------------------


def test_the_task_id_rule_is_the_pattern_minus_dot_segments():
    """'.' and '..' are the only names of 1-64 such characters a URL path cannot carry."""
    alphabet = "a.-"
    for length in range(1, 5):
        for chars in itertools.product(alphabet, repeat=length):
            name = "".join(chars)
            assert ids.is_task_id(name) is (name not in (".", "..")), name
    assert ids.is_task_id("x" * 64) and not ids.is_task_id("x" * 65)
    assert not ids.is_task_id("a/b") and not ids.is_task_id("a\n") and not ids.is_task_id(7)


@pytest.mark.parametrize("task_id", [".", ".."])
def test_dot_task_ids_are_422_everywhere(client, task_id):
    body = {"task_id": task_id, "user_email": "test@example.com"}
    assert client.post("/update_task", json=body).status_code == 422
    path = "/tasks/" + "%2E" * len(task_id)  # a client that sent /tasks/.. would have asked for /
    for method in ("get", "put", "patch", "delete"):
        response = getattr(client, method)(path, json={"user_email": "test@example.com"})
        assert response.status_code == 422, (method, response.data)
        assert response.get_json()["error"]["details"][0]["field"] == "task_id"
    assert client.get(path + "/events").status_code == 422
    response = client.get("/notifications", query_string={"task_id": task_id})
    assert response.status_code == 422 and response.get_json()["error"]["details"][0]["field"] == "task_id"
    assert client.get("/task_updates", query_string={"task_id": task_id}).status_code == 422
    assert client.get("/tasks").get_json()["tasks"] == []


def test_three_dots_are_a_task_id(client):
    assert client.post("/update_task", json={"task_id": "...", "user_email": "test@example.com"}).status_code == 200
    assert client.get("/tasks/...").get_json()["task_id"] == "..."


# -- the cost of a subscribe -----------------------------------------------------------------


class CountedId(str):
    """A task id that records when anything looks at it (hash, compare, format)."""

    looked_at: ClassVar[set[str]] = set()

    def _look(self) -> None:
        CountedId.looked_at.add(str.__str__(self))

    def __hash__(self) -> int:
        self._look()
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        self._look()
        return str.__eq__(self, other)

    def __lt__(self, other: str) -> bool:
        self._look()
        return str.__lt__(self, other)

    def __format__(self, spec: str) -> str:
        self._look()
        return str.__format__(self, spec)

    def __str__(self) -> str:
        self._look()
        return str.__str__(self)


class RoomRecorder:
    """The part of a Socket.IO server the hub's subscribe uses: rooms, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def enter_room(self, sid: str, room: str) -> None:
        self.calls.append(("enter", sid, room))

    def leave_room(self, sid: str, room: str) -> None:
        self.calls.append(("leave", sid, room))


class FakeSocketIO:
    def __init__(self) -> None:
        self.server = RoomRecorder()

    def start_background_task(self, target: Any, *args: Any) -> None:
        target(*args)  # at once: the hub attaches a new client from a background task

    def emit(self, *_args: Any, **_kwargs: Any) -> None:
        pass  # stream_start


def connected_hub(max_subscriptions: int, viewer: Viewer) -> tuple[streams.StreamHub, RoomRecorder]:
    socketio = FakeSocketIO()
    hub = streams.StreamHub(socketio, store=None, broker=None, direct_writes=False,  # type: ignore[arg-type]
                            max_subscriptions=max_subscriptions)
    hub.connect("sid", viewer, None)
    return hub, socketio.server


@pytest.mark.parametrize("viewer", [Viewer(email=None), Viewer(email="a@example.com", scopes=frozenset({"x"}))])
def test_a_subscribe_looks_at_no_other_subscription_and_changes_at_most_two_rooms(viewer):
    hub, server = connected_hub(1000, viewer)
    prefix = "" if viewer.email is None else f"user:{viewer.email}/"
    assert server.calls == [("enter", "sid", prefix + "all")]
    held = [CountedId(f"t{n}") for n in range(500)]
    for task_id in held:
        hub.subscribe("sid", task_id)
    server.calls.clear()
    CountedId.looked_at.clear()
    acks = [hub.subscribe("sid", "new"), hub.unsubscribe("sid", "t7"),
            hub.subscribe("sid", "t8")]  # already there: nothing changes
    assert CountedId.looked_at <= {"t7", "t8"}  # those found in the set, none of the others
    assert [len(ack) for ack in acks] == [501, 500, 500]
    assert acks[0][-1] == acks[1][-1] == acks[2][-1] == "new"  # in the order of subscribing
    assert server.calls == [("enter", "sid", prefix + "task:new"), ("leave", "sid", prefix + "task:t7")]


def test_the_first_subscribe_leaves_the_all_room_and_the_last_unsubscribe_enters_it():
    hub, server = connected_hub(10, Viewer(email=None))
    hub.subscribe("sid", "a")
    hub.subscribe("sid", "b")
    hub.unsubscribe("sid", "a")
    hub.unsubscribe("sid", "b")
    assert server.calls == [("enter", "sid", "all"), ("leave", "sid", "all"), ("enter", "sid", "task:a"),
                            ("enter", "sid", "task:b"), ("leave", "sid", "task:a"), ("leave", "sid", "task:b"),
                            ("enter", "sid", "all")]


def test_subscriptions_past_the_cap_are_refused_and_change_nothing():
    hub, server = connected_hub(2, Viewer(email=None))
    assert hub.subscribe("sid", "a") == ["a"]
    assert hub.subscribe("sid", "b") == ["a", "b"]
    calls = list(server.calls)
    with pytest.raises(streams.SubscribeRefused, match="at most 2 subscriptions"):
        hub.subscribe("sid", "c")
    assert hub.subscribe("sid", "a") == ["a", "b"]
    assert server.calls == calls
    hub.disconnect("sid")
    with pytest.raises(streams.SubscribeRefused, match="not connected"):
        hub.subscribe("sid", "a")


class DeferredSocketIO(FakeSocketIO):
    """Background tasks kept until run, and what is emitted, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[tuple[Any, tuple[Any, ...]]] = []
        self.emitted: list[tuple[str, Any]] = []

    def start_background_task(self, target: Any, *args: Any) -> None:
        self.tasks.append((target, args))

    def emit(self, event: str, data: Any = None, to: str | None = None, **_kwargs: Any) -> None:
        self.emitted.append((event, to))


def test_clients_connecting_together_are_attached_by_one_task_and_a_replay_by_its_own():
    """A reconnect storm: one task attaches the clients that connected meanwhile (a task each cost more than the
    rest of a Socket.IO connect), in order; a client with events to replay does not hold up the others."""
    socketio = DeferredSocketIO()
    hub = streams.StreamHub(socketio, store=None, broker=None, direct_writes=False,  # type: ignore[arg-type]
                            max_subscriptions=10)
    hub._position = 7  # the last event emitted to the rooms
    for n in range(100):
        hub.connect(f"s{n}", Viewer(email=None), 3 if n == 50 else None)
    assert len(socketio.tasks) == 1
    target, args = socketio.tasks.pop()
    target(*args)
    fresh = [f"s{n}" for n in range(100) if n != 50]
    assert socketio.emitted == [("stream_start", sid) for sid in fresh]
    assert socketio.server.calls == [("enter", sid, "all") for sid in fresh]
    [(replay_target, replay_args)] = socketio.tasks
    assert replay_args == ("s50", 3)  # from its own last event id, in a task of its own
    hub.connect("late", Viewer(email=None), None)
    assert len(socketio.tasks) == 2  # the first task had finished: a new one


@pytest.mark.parametrize("raw", ["0", "-5", "many"])
def test_a_bad_subscription_cap_stops_the_configuration(raw):
    with pytest.raises(ValueError, match="MAX_SUBSCRIPTIONS_PER_CONNECTION"):
        load_config({"MAX_SUBSCRIPTIONS_PER_CONNECTION": raw})
    assert load_config({})["MAX_SUBSCRIPTIONS_PER_CONNECTION"] == 100
