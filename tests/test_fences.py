"""The fence around library internals (fences.py): the self-check of each part, its fallback, and who may reach in.

In process: each part's check passes on the pinned versions and fails, naming
what is missing, when one of its internals is taken away (monkeypatch). Against
the real server: a part forced onto its fallback (SELF_CHECK_FAIL) or really
broken (tests/break_internals.py) says so in one log line and in /metrics, and
the service still serves SSE and Socket.IO with resume. A scan of the source
keeps every reach inside the fenced modules.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import socketio
from limits.storage import MemoryStorage

from support import ROOT, free_port, wait_for
from tasknotify import fences
from tasknotify.api import ratelimit
from tasknotify.errors import APIError
from tasknotify.live.takeover import httpserver, rooms

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import eventlet  # noqa: F401 - first imported here, quietly: it warns once that it is deprecated

FALLBACK_LINE = "runs on its fallback"
ASYNC_MODE = os.environ.get("TEST_ASYNC_MODE", "eventlet")


def eventlet_server() -> socketio.Server:
    """A Socket.IO server as `python app.py` makes it (eventlet mode; nothing runs)."""
    return socketio.Server(async_mode="eventlet")


def context(part: str) -> tuple[Any, ...]:
    """What check(part, ...) is given in the app."""
    server = eventlet_server()
    return {"takeover": (server,), "connect-events": (server.manager,), "malformed-packet-close": (server.eio,),
            "http-guards": ("eventlet",), "gevent-takeover": (socketio.Server(async_mode="gevent"),)}.get(part, ())


def fallback_gauge(metrics_text: str) -> dict[str, float]:
    return {part: float(value) for part, value in
            re.findall(r'^library_fallbacks\{part="([^"]+)"\} (\S+)$', metrics_text, flags=re.MULTILINE)}


# -- the checks, in process --------------------------------------------------------


@pytest.mark.parametrize("part", list(fences.PARTS))
def test_every_part_passes_on_the_pinned_versions(part: str) -> None:
    checked = fences.Fences()
    assert checked.check(part, *context(part)), checked.fallbacks


def test_http_guards_pass_under_gevent_too() -> None:
    checked = fences.Fences()
    assert checked.check("http-guards", "gevent"), checked.fallbacks


def _drop_pending_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-socketio before 5.18: managers without pending_connect."""
    from socketio.base_manager import BaseManager

    init = BaseManager.__init__

    def without(self: Any) -> None:
        init(self)
        del self.pending_connect

    monkeypatch.setattr(BaseManager, "__init__", without)


def _delete(dotted: str) -> Callable[[pytest.MonkeyPatch], None]:
    module, _, attribute = dotted.rpartition(".")
    owner, _, name = module.rpartition(".")

    def breaks(monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib

        monkeypatch.delattr(getattr(importlib.import_module(owner), name), attribute)

    return breaks


def _wrap(dotted: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Replace a method by a pass-through of another shape: what it hooks into is no longer its code."""
    module, _, attribute = dotted.rpartition(".")
    owner, _, name = module.rpartition(".")

    def breaks(monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib

        cls = getattr(importlib.import_module(owner), name)
        original = getattr(cls, attribute)
        monkeypatch.setattr(cls, attribute, lambda self, *args, **kwargs: original(self, *args, **kwargs))

    return breaks


def _hub_add_without_callbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventlet import hubs

    hub_class = type(hubs.get_hub())
    monkeypatch.setattr(hub_class, "add", lambda self, evtype, fileno: None)


BREAKS = [
    ("takeover", _wrap("eventlet.wsgi.HttpProtocol.handle_one_response"), "start_response closes over"),
    ("takeover", _delete("eventlet.wsgi.Input.get_socket"), "get_socket"),
    ("takeover", _hub_add_without_callbacks, "hub: READ, add("),
    ("takeover", _delete("engineio.base_socket.BaseSocket.upgrade_protocols"), None),  # not relied on: still passes
    ("takeover", _wrap("engineio.socket.Socket._upgrade_websocket"), "_upgrade_websocket builds it"),
    ("takeover", _delete("wsproto.frame_protocol.FrameProtocol.pong"), "wsproto FrameProtocol"),
    ("rooms", _drop_pending_connect, "pending_connect"),
    ("rooms", _delete("socketio.base_manager.BaseManager.basic_enter_room"), "basic_enter_room"),
    ("rooms", _wrap("socketio.base_manager.BaseManager.basic_disconnect"), "basic_disconnect clears exactly"),
    ("connect-events", _delete("socketio.base_manager.BaseManager.is_pre_connected"), "is_pre_connected"),
    ("ratelimit-sweep", _delete("limits.storage.memory.MemoryStorage._MemoryStorage__expire_events"),
     "__expire_events"),
    ("ratelimit-sweep", _delete("limits.storage.memory.MemoryStorage._MemoryStorage__schedule_expiry"),
     "__schedule_expiry"),
    ("http-guards", _delete("eventlet.wsgi.HttpProtocol._read_request_line"), "_read_request_line"),
    ("lean-buffers", _wrap("eventlet.wsgi.HttpProtocol.setup"), "rbufsize and wbufsize"),
    ("gevent-takeover", _wrap("gevent.pywsgi.WSGIHandler.process_result"), "process_result ends a chunked body"),
    ("gevent-takeover", _delete("gevent.pywsgi.WSGIHandler.get_environ"), "after get_environ()"),
    ("gevent-takeover", _wrap("geventwebsocket.handler.WebSocketHandler.run_websocket"),
     "run_websocket closes the websocket after the app unless it is closed"),
    ("gevent-takeover", _wrap("engineio.async_drivers.gevent.WebSocketWSGI.__call__"),
     "the gevent driver's over gevent-websocket"),
    ("gevent-takeover", _delete("engineio.socket.Socket.schedule_ping"), "schedule_ping()"),
]


@pytest.mark.parametrize(("part", "breaks", "missing"), BREAKS,
                         ids=[f"{part}-{n}" for n, (part, _, _) in enumerate(BREAKS)])
def test_a_missing_internal_fails_its_part_with_one_line_naming_it(monkeypatch, caplog, part, breaks,
                                                                   missing) -> None:
    args = context(part)  # built before the break, as the app builds them before it checks
    breaks(monkeypatch)
    checked = fences.Fences()
    with caplog.at_level(logging.INFO, logger="fences"):
        passed = checked.check(part, *args)
        assert checked.check(part, *args) is passed  # once: the second call neither checks nor logs again
    if missing is None:
        assert passed and not caplog.records
        return
    assert not passed
    assert any(missing in what for what in checked.fallbacks[part]), checked.fallbacks
    [record] = caplog.records
    assert record.levelno == (logging.ERROR if part == "http-guards" else logging.WARNING)
    assert f"part '{part}'" in record.getMessage() and missing in record.getMessage()
    assert FALLBACK_LINE in record.getMessage()


def test_the_malformed_packet_hook_needs_engineio_s_message_handler() -> None:
    server = eventlet_server()
    server.eio.handlers.pop("message")
    checked = fences.Fences()
    assert not checked.check("malformed-packet-close", server.eio)
    assert "handlers['message']" in checked.fallbacks["malformed-packet-close"][0]


def test_http_guards_under_gevent_fail_without_its_error_hook(monkeypatch) -> None:
    from gevent import pywsgi

    monkeypatch.delattr(pywsgi.WSGIHandler, "_send_error_response_if_possible")
    checked = fences.Fences()
    assert not checked.check("http-guards", "gevent")
    assert "_send_error_response_if_possible" in checked.fallbacks["http-guards"][0]


def test_self_check_fail_forces_parts_and_refuses_unknown_names() -> None:
    from tasknotify.config import load_config

    assert load_config({"SELF_CHECK_FAIL": "rooms, takeover"})["SELF_CHECK_FAIL"] == ("rooms", "takeover")
    assert fences.Fences(["all"]).forced == set(fences.PARTS)
    forced = fences.Fences(["rooms"])
    assert not forced.check("rooms") and forced.fallbacks == {"rooms": [fences.FORCED]}
    with pytest.raises(ValueError, match="SELF_CHECK_FAIL"):
        load_config({"SELF_CHECK_FAIL": "room"})


# -- the fallbacks, in process ----------------------------------------------------------


def test_the_app_counts_each_part_on_its_fallback_in_metrics(make_app) -> None:
    app = make_app(SELF_CHECK_FAIL=("rooms", "ratelimit-sweep"))
    gauge = fallback_gauge(app.test_client().get("/metrics").get_data(as_text=True))
    assert gauge == {**dict.fromkeys(fences.PARTS, 0.0), "rooms": 1.0, "ratelimit-sweep": 1.0}
    assert fallback_gauge(make_app(SELF_CHECK_FAIL=()).test_client().get("/metrics").get_data(as_text=True)) == (
        dict.fromkeys(fences.PARTS, 0.0))


def test_rooms_fall_back_to_the_stock_manager_which_serves(make_app) -> None:
    import app as app_module

    app = make_app(SELF_CHECK_FAIL=("rooms",))
    assert type(app.extensions["socketio"].server.manager) is socketio.Manager
    app_module.start(app)
    client = app.extensions["socketio"].test_client(app)
    assert client.is_connected()
    assert app.test_client().post("/update_task", json={"task_id": "r", "user_email": "a@example.com"}).status_code \
        == 200
    assert [r["name"] for r in client.get_received()] == ["stream_start", "task_update"]
    client.disconnect()
    assert app.extensions["streams"].counts["socketio"] == 0


def test_a_manager_without_pending_connect_gets_the_stock_manager(make_app, monkeypatch) -> None:
    """python-socketio 5.12-5.17 has no pending_connect, which the indexed manager's disconnect reads."""
    _drop_pending_connect(monkeypatch)
    app = make_app(SELF_CHECK_FAIL=())
    assert type(app.extensions["socketio"].server.manager) is socketio.Manager
    assert app.extensions["fences"].fallbacks.keys() == {"rooms"}
    assert type(rooms.client_manager(None, "c", indexed=False)) is socketio.Manager
    assert type(rooms.client_manager("redis://127.0.0.1:1/0", "c", indexed=False)) is socketio.RedisManager


def test_the_malformed_packet_hook_is_left_out_on_its_fallback(make_app) -> None:
    hooked = make_app(SELF_CHECK_FAIL=()).extensions["socketio"].server
    assert hooked.eio.handlers["message"] != hooked._handle_eio_message
    stock = make_app(SELF_CHECK_FAIL=("malformed-packet-close",)).extensions["socketio"].server
    assert stock.eio.handlers["message"] == stock._handle_eio_message


def test_the_limiter_falls_back_to_the_stock_storage_and_still_limits(make_app) -> None:
    app = make_app(SELF_CHECK_FAIL=("ratelimit-sweep",), RATE_LIMIT_WRITES="2 per minute", AUTH_DISABLED=False)
    storage = app.extensions["write_limit"].limiter.storage
    assert type(storage) is MemoryStorage
    limit = ratelimit.WriteLimit("2 per minute", "memory://", swept=False)
    limit.hit("a")
    limit.hit("a")
    with pytest.raises(APIError) as refused:
        limit.hit("a")
    assert refused.value.status == 429


def test_a_broken_limiter_hook_is_an_error_never_a_limit_turned_off(monkeypatch) -> None:
    limit = ratelimit.WriteLimit("1 per minute", "memory://")

    def renamed(self: Any) -> None:
        raise AttributeError("'SweptMemoryStorage' object has no attribute '_MemoryStorage__expire_events'")

    monkeypatch.setattr(ratelimit.SweptMemoryStorage, "_MemoryStorage__schedule_expiry", renamed)
    with pytest.raises(AttributeError):
        limit.hit("a")


def test_a_rate_limit_storage_that_cannot_be_reached_lets_writes_through(caplog) -> None:
    limit = ratelimit.WriteLimit("1 per minute", f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="ratelimit"):
        assert limit.hit("a") == {} and limit.hit("a") == {}
    assert "rate-limit storage unavailable" in caplog.text


def test_the_http_server_falls_back_to_the_plain_handler_and_buffers() -> None:
    from eventlet import wsgi
    from geventwebsocket.handler import WebSocketHandler

    limits = httpserver.Limits(10.0, 75.0)
    guarded = httpserver.eventlet_protocol(limits)
    assert issubclass(guarded, httpserver._HeadDeadline) and guarded.rbufsize == guarded.wbufsize == 1024
    lean = httpserver.eventlet_protocol(limits, guards=False)
    assert not issubclass(lean, httpserver._HeadDeadline) and lean.rbufsize == 1024
    assert httpserver.eventlet_protocol(limits, guards=False, lean_buffers=False) is wsgi.HttpProtocol
    assert httpserver.eventlet_protocol(limits, lean_buffers=False).wbufsize == wsgi.HttpProtocol.wbufsize
    plain = httpserver.gevent_handler(limits, guards=False)  # gevent-websocket's, offering the SSE take-over only
    assert issubclass(plain, WebSocketHandler) and not issubclass(plain, httpserver._HeadDeadline)


# -- the fallbacks, against the real server -----------------------------------------------


def _post(server: Any, task_id: str, user_email: str = "test@example.com") -> int:
    response = server.post("/update_task", {"task_id": task_id, "user_email": user_email})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def _serves_streams_with_resume(server: Any) -> None:
    """SSE and Socket.IO: live events, and a client that comes back with its last id misses nothing.

    A queued SSE stream notices its client left at its next heartbeat: the server's should be short.
    """
    first = _post(server, "f-1")
    sse, sio = server.sse("/task_updates?last_event_id=0"), server.socketio(auth={"last_event_id": 0})
    second = _post(server, "f-2")
    sse.wait_for_events(2)
    sio.wait_for_events(2)
    assert sse.ids == sio.ids == [first, second]
    sse.close()
    sio.close()
    missed = [_post(server, "f-3"), _post(server, "f-4")]
    sse = server.sse(f"/task_updates?last_event_id={second}")
    sio = server.socketio(auth={"last_event_id": second})
    live = _post(server, "f-5")
    sse.wait_for_events(3)
    sio.wait_for_events(3)
    assert sse.ids == sio.ids == [*missed, live]
    sse.close()
    sio.close()
    wait_for(lambda: server.get("/healthz").json()["streams"] == {"sse": 0, "socketio": 0}, 10, "streams freed")


def test_the_live_server_passes_every_check_on_the_pinned_versions(start_server) -> None:
    server = start_server(SELF_CHECK_FAIL="", DIRECT_WRITES="1")
    assert fallback_gauge(server.get("/metrics").text) == dict.fromkeys(fences.PARTS, 0.0)
    assert FALLBACK_LINE not in server.log()


@pytest.mark.parametrize("how", ["forced", "broken"])
def test_takeover_and_rooms_on_their_fallbacks_still_serve_streams_with_resume(start_server, how) -> None:
    # Each mode checks its own take-over only.
    takeover = "takeover" if ASYNC_MODE == "eventlet" else "gevent-takeover"
    if how == "forced":
        server = start_server(SELF_CHECK_FAIL="takeover,gevent-takeover,rooms", DIRECT_WRITES="1",
                              SSE_HEARTBEAT_SECONDS="0.5")
        missing = {takeover: fences.FORCED, "rooms": fences.FORCED}
    else:
        server = start_server("tests/break_internals.py", BREAK_INTERNALS=f"{takeover},rooms", SELF_CHECK_FAIL="",
                              DIRECT_WRITES="1", SSE_HEARTBEAT_SECONDS="0.5")
        missing = {"takeover": "wsproto FrameProtocol", "gevent-takeover": "process_result ends a chunked body",
                   "rooms": "basic_disconnect clears exactly"}
        missing.pop("gevent-takeover" if takeover == "takeover" else "takeover")
    lines = [line for line in server.log().splitlines() if FALLBACK_LINE in line]
    assert len(lines) == len(missing), lines
    for part, what in missing.items():
        [line] = [line for line in lines if f"part '{part}'" in line]
        assert " WARNING fences: " in line and what in line
    assert fallback_gauge(server.get("/metrics").text) == {**dict.fromkeys(fences.PARTS, 0.0),
                                                           **dict.fromkeys(missing, 1.0)}
    _serves_streams_with_resume(server)


def test_gevent_websockets_whose_internals_changed_stay_on_the_queued_path_and_serve(start_server) -> None:
    """gevent-websocket's handler would write a close frame into a websocket taken over: the part falls back."""
    server = start_server("tests/break_internals.py", BREAK_INTERNALS="gevent-websocket", ASYNC_MODE="gevent",
                          SELF_CHECK_FAIL="", DIRECT_WRITES="1", SSE_HEARTBEAT_SECONDS="0.5")
    [line] = [line for line in server.log().splitlines() if FALLBACK_LINE in line]
    assert "part 'gevent-takeover'" in line and "run_websocket closes the websocket" in line, line
    assert fallback_gauge(server.get("/metrics").text) == {**dict.fromkeys(fences.PARTS, 0.0), "gevent-takeover": 1.0}
    _serves_streams_with_resume(server)


def test_connect_events_on_their_fallback_still_end_a_client_s_own_connect_and_disconnect(start_server) -> None:
    from support import make_token

    server = start_server(SELF_CHECK_FAIL="connect-events", MAX_STREAMS_PER_USER="2")
    assert fallback_gauge(server.get("/metrics").text)["connect-events"] == 1.0
    alice = make_token("alice@example.com", ("updates:read",))
    for name in ("connect", "disconnect"):
        hostile = socketio.Client(reconnection=False)
        hostile.connect(server.url, auth={"token": alice}, transports=["websocket"], wait_timeout=10)
        other = server.socketio(token=alice)
        wait_for(lambda: server.get("/healthz").json()["streams"]["socketio"] == 2)
        hostile.emit(name, ({}, {"token": alice}) if name == "connect" else None)
        wait_for(lambda client=hostile: not client.connected, 10, f"the connection that sent {name!r} to end")
        wait_for(lambda: server.get("/healthz").json()["streams"]["socketio"] == 1, 10, "its place given back once")
        event_id = _post(server, f"ce-{name}", "alice@example.com")
        other.wait_for_events(1)
        assert other.ids == [event_id]
        other.close()
        wait_for(lambda: server.get("/healthz").json()["streams"]["socketio"] == 0)
    assert "Traceback" not in server.log()


def test_the_http_server_on_its_fallbacks_logs_an_error_and_serves(start_server) -> None:
    server = start_server(SELF_CHECK_FAIL="http-guards,lean-buffers", SSE_HEARTBEAT_SECONDS="0.5")
    [line] = [line for line in server.log().splitlines() if "part 'http-guards'" in line]
    assert " ERROR fences: " in line and "NO deadline for request heads" in line
    gauge = fallback_gauge(server.get("/metrics").text)
    assert gauge["http-guards"] == 1.0
    assert gauge["lean-buffers"] == (1.0 if server.env["ASYNC_MODE"] == "eventlet" else 0.0)
    _serves_streams_with_resume(server)


# -- who may reach into the libraries ---------------------------------------------------------

LIBRARIES = ("eventlet", "engineio", "socketio", "flask_socketio", "limits", "gevent", "geventwebsocket", "wsproto")
# The modules that reach into the libraries' internals, each covered by a part of the self-check: the take-over
# sub-package (eventlet, python-engineio, python-socketio), the rate limiter's hook of limits and the self-check itself.
TAKEOVER = Path("tasknotify/live/takeover")
FENCED = {Path("tasknotify/fences.py"), Path("tasknotify/api/ratelimit.py")}
# The internals the self-check covers, by name: no other module may use one.
INTERNALS = {
    "_async", "_MemoryStorage__schedule_expiry", "_MemoryStorage__expire_events", "_parse_more", "_read_request_line",
    "_send_error_response_if_possible", "_websocket_handler", "_upgrade_websocket", "schedule_ping", "last_ping",
    "pending_connect", "pending_disconnect", "basic_enter_room", "basic_leave_room", "basic_disconnect",
    "get_participants", "send_packet", "already_handled", "WSGI_LOCAL", "rbufsize", "wbufsize", "handlers",
    "sockets", "__closure__", "response_use_chunked",
}
# What the service calls the libraries' objects.
LIBRARY_OBJECTS = {"eio", "eio_socket", "manager", "ws", "hub", "green", "green_socket", "frames", "sio", "socketio",
                   "wsgi", "handler", "protocol", "storage"}
SKIPPED_DIRS = {"tests", "bench", "migrations", "clients", "node_modules", "instance"}


def _service_modules() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part in SKIPPED_DIRS for part in path.relative_to(ROOT).parts))


def _fenced(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    return relative in FENCED or relative.is_relative_to(TAKEOVER)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def reaches(source: str) -> list[str]:
    """Where source touches a library's internals: `line: what`."""
    tree = ast.parse(source)
    imported = {"self_is_not_a_library"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in LIBRARIES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            imported |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            on_library = (isinstance(root, ast.Name) and root.id in imported | LIBRARY_OBJECTS) or (
                isinstance(node.value, ast.Attribute) and node.value.attr in {"eio", "manager", "server"})
            if node.attr in INTERNALS or (_private(node.attr) and on_library):
                found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in INTERNALS:
            found.append(f"{node.lineno}: def {node.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in INTERNALS:
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_the_scan_finds_reaches() -> None:
    source = """
import eventlet.wsgi
from engineio import socket as eio_socket_module
from limits.storage import MemoryStorage as Base

class Swept(Base):
    def _MemoryStorage__schedule_expiry(self): ...

def f(app, server):
    eventlet.wsgi.WSGI_LOCAL.already_handled = True
    eio_socket_module._private_helper()
    app.socketio.server.eio.handlers["message"]
    getattr(server.eio, "_async")
    server.manager._rooms_of
    self._own_state
"""
    found = {line.split(": ", 1)[1] for line in reaches(source)}
    assert found == {"def _MemoryStorage__schedule_expiry", ".already_handled", ".WSGI_LOCAL", "._private_helper",
                     ".handlers", "'_async'", "._rooms_of"}


def test_no_module_outside_the_fence_touches_a_library_internal() -> None:
    modules = _service_modules()
    scanned = {path.relative_to(ROOT) for path in modules}
    assert scanned >= FENCED | {TAKEOVER / "fanout.py", TAKEOVER / "httpserver.py", TAKEOVER / "rooms.py",
                                Path("app.py"), Path("tasknotify/live/streams.py")}
    found = {str(path.relative_to(ROOT)): reaches(path.read_text()) for path in modules if not _fenced(path)}
    assert {module: lines for module, lines in found.items() if lines} == {}
