"""Socket.IO in process: a client leaving costs its own rooms only; events are emitted as they are published."""

from __future__ import annotations

import socketio

from support import wait_for
from tasknotify.live.takeover import rooms


class NoScan(dict):
    """A namespace's rooms that fail the test when anything walks all of them."""

    def _walked(self, *_args: object) -> None:
        raise AssertionError("the manager walked every room of the namespace")

    copy = items = values = keys = __iter__ = _walked  # type: ignore[assignment]


def connected(manager: rooms.IndexedManager, count: int) -> list[str]:
    socketio.Server(client_manager=manager, async_mode="threading")  # the manager's server names the clients
    sids = []
    for n in range(count):
        sid = manager.connect(f"eio-{n}", "/")
        manager.enter_room(sid, "/", f"user{n % 10}all")
        manager.enter_room(sid, "/", f"task:{n}")
        sids.append(sid)
    return sids


def test_disconnect_leaves_only_the_clients_own_rooms_without_walking_the_others():
    manager = rooms.IndexedManager()
    sids = connected(manager, 300)
    manager.rooms["/"] = NoScan(manager.rooms["/"])
    manager.disconnect(sids[7], "/")
    assert not manager.is_connected(sids[7], "/")
    assert "task:7" not in manager.rooms["/"]
    assert sids[7] not in manager.rooms["/"]["user7all"]
    assert len(manager.rooms["/"]["user7all"]) == 29  # the user's other clients stay
    assert manager.get_rooms(sids[8], "/") != []
    assert set(manager.get_rooms(sids[8], "/")) == {sids[8], "user8all", "task:8"}


def test_every_client_gone_leaves_no_room_behind():
    manager = rooms.IndexedManager()
    sids = connected(manager, 50)
    manager.leave_room(sids[0], "/", "task:0")
    assert set(manager.get_rooms(sids[0], "/")) == {sids[0], "user0all"}
    for sid in sids:
        manager.disconnect(sid, "/")
    assert manager.rooms == {}
    assert manager.indexed_clients == 0
    assert manager.pending_connect == {}


def test_the_app_uses_the_indexed_manager(make_app):
    app = make_app(SELF_CHECK_FAIL=())  # whatever the run forces onto fallbacks (bin/test's pass 4)
    assert type(app.extensions["socketio"].server.manager) is rooms.IndexedManager


def test_with_redis_the_shared_manager_is_indexed_too():
    manager = rooms.client_manager("redis://127.0.0.1:6379/0", "tasks-socketio")  # connects on first use only
    assert isinstance(manager, rooms.IndexedRedisManager)
    assert manager.channel == "tasks-socketio"


def test_a_write_is_in_the_socketio_clients_queue_before_the_post_is_answered(make_app):
    # The stream hub emits each event as it is published (after the commit, in the
    # POST's own thread): no hand-over to a relay thread that runs later.
    import app as app_module

    app = make_app()
    app_module.start(app)
    socketio = app.extensions["socketio"]
    client = socketio.test_client(app)
    assert client.is_connected()
    # A new client is told where its stream starts, then joins its rooms (from a background task).
    wait_for(lambda: socketio.server.manager.rooms.get("/", {}).get("all"), 10, "the client in its room")
    assert [r["name"] for r in client.get_received()] == ["stream_start"]
    written = app.test_client().post("/update_task", json={"task_id": "123", "user_email": "a@example.com"})
    assert written.status_code == 200
    received = client.get_received()
    assert [(r["name"], r["args"][0]["task_id"]) for r in received] == [("task_update", "123")]
    client.disconnect()
