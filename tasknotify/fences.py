"""The fence around the library internals the service relies on: a self-check at start, and the fallbacks.

Some parts of the service use parts of eventlet, python-engineio,
python-socketio, limits, gevent, gevent-websocket and wsproto that those
libraries do not document (requirements.txt pins their exact versions). Each
such reach is a *part*, named in PARTS with what it relies on and what runs
instead. Where a part is built (in create_app, or in `python app.py` for its
HTTP server), `Fences.check(name, ...)` verifies that every internal the part
relies on is there and has the expected shape: the attributes, the parameters
of the calls made to it, and the library's own calls that the part hooks
into. The checks are cheap and run once, never per request.

A part whose check fails runs on its fallback, which uses the libraries'
public API only, and is never silent: one log line names the part and what is
missing (WARNING; ERROR for the HTTP server's guards, whose fallback has no
deadline for request heads), and the gauge `library_fallbacks{part}` is 1.

    takeover                live streams taken over from eventlet (fanout.py)   -> the queued path (DIRECT_WRITES=0)
    gevent-takeover         live streams taken over from gevent (fanout.py)     -> the queued path (DIRECT_WRITES=0)
    rooms                   the indexed client manager (rooms.py)               -> python-socketio's stock manager
    connect-events          real connects/disconnects told from a client's own  -> the stream hub's own record
    malformed-packet-close  an unparsable packet ends its connection            -> python-socketio drops the packet
    ratelimit-sweep         the rate limiter's sweep once a second              -> limits' stock MemoryStorage
    http-guards             head deadline, keep-alive limit, JSON refusals      -> the server's plain handler (ERROR)
    lean-buffers            1 KiB buffers per eventlet connection               -> eventlet's default sizes

SELF_CHECK_FAIL (a setting for tests only) fails the parts it names, or all.
"""

from __future__ import annotations

import inspect
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("fences")

# (what the part relies on, a predicate that holds when it is there and has the expected shape)
Requirement = tuple[str, Callable[[], object]]
FORCED = "forced by SELF_CHECK_FAIL (a setting for tests only)"


@dataclass(frozen=True)
class Part:
    name: str
    relies_on: str  # whose internals, for what
    fallback: str  # what runs when the check fails
    requirements: Callable[..., list[Requirement]]  # given the objects the part works on
    level: int = logging.WARNING


# -- what the checks look at -------------------------------------------------------


def _binds(func: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether func can be called with these arguments, as the service calls it."""
    inspect.signature(func).bind(*args, **kwargs)
    return True


def _code(func: Any) -> Any:
    return inspect.unwrap(func).__code__


def _names(func: Any) -> set[str]:
    """The global and attribute names func's own code uses (what it reads, writes and calls)."""
    return set(_code(func).co_names)


def _nested(func: Any, name: str) -> Any:
    """The code of the function called name defined inside func."""
    for const in _code(func).co_consts:
        if inspect.iscode(const) and const.co_name == name:
            return const
    raise LookupError(name)


def _missing(requirements: Iterable[Requirement]) -> list[str]:
    """What of requirements does not hold."""
    missing = []
    for what, holds in requirements:
        try:
            held = bool(holds())
        except Exception:  # noqa: BLE001 - a predicate that cannot even run has its answer: not there
            held = False
        if not held:
            missing.append(what)
    return missing


# -- the parts -------------------------------------------------------------------


def takeover_requirements(sio_server: Any) -> list[Requirement]:
    """fanout.py: eventlet's WSGI server, green sockets and hub; Engine.IO's sockets; wsproto's frame parser."""
    import _socket

    from eventlet import greenio, hubs, websocket, wsgi

    eio = sio_server.eio
    protocol = wsgi.HttpProtocol

    def chunking_known() -> bool:
        respond = protocol.handle_one_response
        return "self" in _nested(respond, "start_response").co_freevars and "request_version" in _nested(
            respond, "write").co_names

    def green_fd() -> bool:
        green = greenio.GreenSocket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            return isinstance(green.fd, _socket.socket)
        finally:
            green.close()

    def hub_shape() -> bool:
        hub = hubs.get_hub()
        return hasattr(hub, "READ") and _binds(hub.add, hub.READ, 0, print, print, print) and _binds(
            hub.remove, None)

    def websocket_class() -> bool:
        base = eio._async["websocket"]
        return "eventlet" in base.__module__ and _binds(base, print, eio)

    return [
        ("eventlet.wsgi.HttpProtocol.handle_one_response: start_response closes over the handler, whose "
         "request_version decides chunking", chunking_known),
        ("eventlet.wsgi.WSGI_LOCAL.already_handled, read by HttpProtocol.handle_one_response",
         lambda: hasattr(wsgi, "WSGI_LOCAL") and {"WSGI_LOCAL", "already_handled"} <= _names(
             protocol.handle_one_response)),
        ("eventlet.wsgi.Input.get_socket()", lambda: _binds(wsgi.Input.get_socket, None)),
        ("eventlet.greenio.GreenSocket().fd, the plain socket under it", green_fd),
        ("eventlet hub: READ, add(evtype, fileno, cb, tb, mark_as_closed), remove(listener)", hub_shape),
        ("eventlet.hubs.trampoline(fd, read=, write=, timeout=, timeout_exc=)",
         lambda: _binds(hubs.trampoline, 0, read=True, write=False, timeout=1.0, timeout_exc=TimeoutError)),
        ("eventlet.websocket.RFC6455WebSocket: socket, wait(), send(), websocket_closed (set: no closing frame)",
         lambda: {"socket", "websocket_closed"} <= _names(websocket.WebSocket.__init__)
         and "websocket_closed" in _names(websocket.RFC6455WebSocket._send_closing_frame)
         and _binds(websocket.RFC6455WebSocket.wait, None) and _binds(websocket.RFC6455WebSocket.send, None, "")),
        ("engineio Server._async['websocket'], eventlet's, built as (handler, server)", websocket_class),
        *_live_websockets_requirements(sio_server),
    ]


def _live_websockets_requirements(sio_server: Any) -> list[Requirement]:
    """fanout.LiveWebSockets under either server: Engine.IO's sockets, Socket.IO's rooms, wsproto's frame parser."""
    import engineio.base_socket
    import engineio.socket
    from wsproto.frame_protocol import FrameProtocol

    eio = sio_server.eio
    eio_socket = engineio.socket.Socket

    def frame_parser() -> bool:
        frames = FrameProtocol(client=False, extensions=[])
        return (inspect.isgenerator(frames._parse_more) and _binds(frames.receive_bytes, b"")
                and _binds(frames.received_frames) and _binds(frames.pong, b"") and _binds(frames.close, 1000, ""))

    state = {"sid", "server", "queue", "last_ping", "connected", "upgrading", "upgraded", "closing", "closed"}
    return [
        ("engineio Socket._upgrade_websocket builds it from server._async with Socket._websocket_handler",
         lambda: {"_async", "_websocket_handler"} <= _names(eio_socket._upgrade_websocket)),
        ("engineio Server.sockets, a dict that Server._handle_connect sets",
         lambda: type(eio.sockets) is dict and "sockets" in _names(type(eio)._handle_connect)),
        ("engineio Socket attributes " + ", ".join(sorted(state)),
         lambda: state <= _names(engineio.base_socket.BaseSocket.__init__)),
        ("engineio Socket.schedule_ping() (after last_ping), receive(pkt), send(pkt), close(wait, abort, reason)",
         lambda: "last_ping" in _names(eio_socket.schedule_ping) and _binds(eio_socket.receive, None, None)
         and _binds(eio_socket.send, None, None) and _binds(eio_socket.close, None, wait=False, abort=True,
                                                             reason=None)),
        ("engineio Server: reason.TRANSPORT_ERROR, TRANSPORT_CLOSE, PING_TIMEOUT; max_http_buffer_size, "
         "ping_interval, ping_timeout; send_packet(sid, pkt); start_background_task(target)",
         lambda: all(hasattr(eio.reason, r) for r in ("TRANSPORT_ERROR", "TRANSPORT_CLOSE", "PING_TIMEOUT"))
         and int(eio.max_http_buffer_size) > 0 and eio.ping_interval > 0 and eio.ping_timeout > 0
         and _binds(eio.send_packet, "sid", None) and _binds(eio.start_background_task, print)),
        ("socketio Server.environ, a dict by Engine.IO sid", lambda: isinstance(sio_server.environ, dict)),
        ("socketio manager.get_participants(namespace, rooms)",
         lambda: _binds(sio_server.manager.get_participants, "/", ["all"])),
        ("wsproto FrameProtocol(client, extensions): _parse_more, receive_bytes, received_frames, pong, close",
         frame_parser),
    ]


def gevent_takeover_requirements(sio_server: Any) -> list[Requirement]:
    """fanout.GeventHandover and GeventLoop: gevent's WSGI handler, what it does at a response's end; its hub.

    For Socket.IO websockets too (fanout.LiveWebSockets): python-engineio's gevent driver and gevent-websocket.
    """
    import gevent
    import gevent.socket
    from gevent import pywsgi

    handler = pywsgi.WSGIHandler
    eio = sio_server.eio

    def detach_gives_fd() -> bool:
        ours, theirs = gevent.socket.socketpair()
        try:
            fd = ours.detach()
            socket.socket(fileno=fd).close()
            return isinstance(fd, int) and ours.fileno() == -1
        finally:
            theirs.close()

    def io_watcher() -> bool:
        ours, theirs = socket.socketpair()
        watcher = gevent.get_hub().loop.io(ours.fileno(), 1)
        try:
            return _binds(watcher.start, print, 0) and _binds(watcher.stop) and _binds(watcher.close)
        finally:
            watcher.close()
            ours.close()
            theirs.close()

    return [
        ("gevent.pywsgi.WSGIHandler.process_result ends a chunked body only when response_use_chunked",
         lambda: "response_use_chunked" in _names(handler.process_result)),
        ("gevent.pywsgi.WSGIHandler.finalize_headers chunks a response of unknown length to an HTTP/1.1 request "
         "(request_version, response_use_chunked)",
         lambda: {"request_version", "response_use_chunked"} <= _names(handler.finalize_headers)),
        ("gevent.pywsgi.WSGIHandler.handle_one_request ends the connection's loop on close_connection, after "
         "get_environ() and handle_one_response()",
         lambda: {"close_connection", "get_environ", "handle_one_response"} <= _names(handler.handle_one_request)
         and _binds(handler.get_environ, None) and _binds(handler.handle_one_response, None)),
        ("gevent.pywsgi.WSGIHandler.handle closes the connection through its socket attribute",
         lambda: "socket" in _names(handler.handle)),
        ("gevent.socket.socket.detach() gives the file descriptor and leaves the socket closed", detach_gives_fd),
        ("gevent hub: loop.io(fd, 1) watchers with start(callback, *args), stop(), close()", io_watcher),
        ("gevent.socket.wait_read(fileno, timeout=, timeout_exc=) and wait_write(fileno)",
         lambda: _binds(gevent.socket.wait_read, 0, timeout=1.0, timeout_exc=TimeoutError)
         and _binds(gevent.socket.wait_write, 0)),
        ("gevent.spawn(func), gevent.spawn_raw(func), Greenlet.kill()",
         lambda: _binds(gevent.spawn, print) and _binds(gevent.spawn_raw, print) and _binds(gevent.Greenlet.kill,
                                                                                            None)),
        ("gevent.pywsgi.WSGIHandler.rfile, the connection's buffered reader (peek())",
         lambda: "rfile" in _names(handler.__init__) and _binds(pywsgi.WSGIHandler.__init__, None, None, None, None,
                                                                 rfile=None)),
        *_gevent_websocket_requirements(eio),
        *_live_websockets_requirements(sio_server),
    ]


def _gevent_websocket_requirements(eio: Any) -> list[Requirement]:
    """fanout._GeventWebSocket: python-engineio's gevent driver over gevent-websocket's WebSocket and handler."""
    from geventwebsocket.handler import WebSocketHandler
    from geventwebsocket.websocket import Stream, WebSocket

    def websocket_class() -> bool:
        base = eio._async["websocket"]
        call = base.__call__
        return (base.__module__ == "engineio.async_drivers.gevent" and _binds(base, print, eio)
                and {"_sock", "environ"} <= _names(call) and "wsgi.websocket" in _code(call).co_consts)

    return [
        ("engineio Server._async['websocket'], the gevent driver's over gevent-websocket: built as (handler, "
         "server), it keeps environ and environ['wsgi.websocket'] (_sock)", websocket_class),
        ("geventwebsocket WebSocket: closed, handler, environ, receive(), send(message); close() (its finalizer's) "
         "reaches its app through handler",
         lambda: {"closed", "handler", "environ"} <= set(WebSocket.__slots__) and _binds(WebSocket.receive, None)
         and _binds(WebSocket.send, None, "") and "current_app" in _names(WebSocket.close)
         and "handler" in _names(WebSocket.current_app.fget)),
        ("geventwebsocket WebSocketHandler.run_websocket closes the websocket after the app unless it is closed",
         lambda: {"closed", "close", "application"} <= _names(WebSocketHandler.run_websocket)),
        ("geventwebsocket Stream reads through the handler's rfile", lambda: "rfile" in _names(Stream.__init__)),
    ]


# The state of a client that python-socketio's basic_disconnect clears, and rooms.RoomIndex's too.
MANAGER_STATE = {"rooms", "callbacks", "pending_connect", "pending_disconnect"}


def rooms_requirements() -> list[Requirement]:
    """rooms.py: python-socketio's BaseManager, whose basic_* methods the indexed manager overrides."""
    import socketio
    from socketio.base_manager import BaseManager

    def disconnect_state() -> bool:
        # What upstream's basic_disconnect clears is what the indexed manager's clears.
        return _names(BaseManager.basic_disconnect) & set(vars(socketio.Manager())) == MANAGER_STATE

    return [
        ("socketio BaseManager.basic_enter_room(sid, namespace, room, eio_sid=)",
         lambda: _binds(BaseManager.basic_enter_room, None, "sid", "/", "room", eio_sid=None)),
        ("socketio BaseManager.basic_leave_room(sid, namespace, room)",
         lambda: _binds(BaseManager.basic_leave_room, None, "sid", "/", "room")),
        ("socketio BaseManager.basic_disconnect(sid, namespace, **kwargs)",
         lambda: _binds(BaseManager.basic_disconnect, None, "sid", "/", ignore_queue=True)),
        ("socketio BaseManager.get_rooms(sid, namespace)", lambda: _binds(BaseManager.get_rooms, None, "sid", "/")),
        ("socketio Manager() attributes " + ", ".join(sorted(MANAGER_STATE)) + " (dicts)",
         lambda: all(isinstance(getattr(socketio.Manager(), name, None), dict) for name in MANAGER_STATE)),
        ("socketio BaseManager.basic_disconnect clears exactly " + ", ".join(sorted(MANAGER_STATE)), disconnect_state),
        ("socketio rooms entered and left through basic_enter_room and basic_leave_room (pre_connect, enter_room, "
         "leave_room, disconnect, close_room)",
         lambda: "basic_enter_room" in _names(BaseManager.pre_connect) & _names(socketio.Manager.enter_room)
         and "basic_leave_room" in _names(socketio.Manager.leave_room) & _names(BaseManager.basic_close_room)
         & _names(BaseManager.basic_disconnect) and "basic_disconnect" in _names(socketio.Manager.disconnect)),
    ]


def connect_events_requirements(manager: Any) -> list[Requirement]:
    """streams.py's connect and disconnect handlers: the manager's is_pre_connected and is_connected."""
    return [
        ("socketio manager.is_pre_connected(sid, namespace)", lambda: _binds(manager.is_pre_connected, "sid", "/")),
        ("socketio manager.is_connected(sid, namespace)", lambda: _binds(manager.is_connected, "sid", "/")),
    ]


def malformed_packet_requirements(eio: Any) -> list[Requirement]:
    """fanout.close_on_malformed_packets: Engine.IO's message handler, which python-socketio registers."""
    from engineio.socket import Socket

    return [
        ("engineio Server.handlers['message'], python-socketio's packet handler",
         lambda: isinstance(eio.handlers, dict) and callable(eio.handlers["message"])),
        ("engineio Server.on(event, handler)", lambda: _binds(eio.on, "message", print)),
        ("engineio Server.sockets.get(sid)", lambda: callable(eio.sockets.get)),
        ("engineio Socket.close(wait=, reason=), Server.reason.SERVER_DISCONNECT",
         lambda: _binds(Socket.close, None, wait=False, reason=None) and hasattr(eio.reason, "SERVER_DISCONNECT")),
    ]


def ratelimit_sweep_requirements() -> list[Requirement]:
    """ratelimit.SweptMemoryStorage: limits' MemoryStorage hook that schedules its sweep, by its mangled name."""
    from limits.storage import MemoryStorage

    schedule = getattr(MemoryStorage, "_MemoryStorage__schedule_expiry", None)
    return [
        ("limits MemoryStorage.__schedule_expiry() (_MemoryStorage__schedule_expiry), with its timer",
         lambda: _binds(schedule, None) and {"timer", "is_alive"} <= _names(schedule)),
        ("limits MemoryStorage.__expire_events() (_MemoryStorage__expire_events)",
         lambda: _binds(MemoryStorage._MemoryStorage__expire_events, None)),  # type: ignore[attr-defined]
        ("limits MemoryStorage.timer, set in __init__", lambda: "timer" in _names(MemoryStorage.__init__)),
        ("limits MemoryStorage.incr and acquire_entry call __schedule_expiry",
         lambda: "_MemoryStorage__schedule_expiry" in _names(MemoryStorage.incr) & _names(
             MemoryStorage.acquire_entry)),
    ]


def http_guards_requirements(mode: str) -> list[Requirement]:
    """httpserver.py: the request handlers of eventlet's or gevent's WSGI server."""
    return _eventlet_guards() if mode == "eventlet" else _gevent_guards()


def _eventlet_guards() -> list[Requirement]:
    from eventlet import wsgi

    protocol = wsgi.HttpProtocol
    return [
        ("eventlet.wsgi.HttpProtocol.handle_one_request: _read_request_line(), parse_request(), "
         "handle_one_response()",
         lambda: {"_read_request_line", "parse_request", "handle_one_response"} <= _names(
             protocol.handle_one_request)),
        ("eventlet.wsgi.HttpProtocol._read_request_line()", lambda: _binds(protocol._read_request_line, None)),
        ("eventlet.wsgi.Server.url_length_limit", lambda: "url_length_limit" in _names(wsgi.Server.__init__)),
        ("eventlet.wsgi.HeaderLineTooLong and HeadersTooLarge",
         lambda: issubclass(wsgi.HeaderLineTooLong, Exception) and issubclass(wsgi.HeadersTooLarge, Exception)),
        ("eventlet.wsgi.HttpProtocol.send_error(code, message, explain)",
         lambda: _binds(protocol.send_error, None, 400, "m", "e")),
        ("eventlet.wsgi.HttpProtocol.setup() makes rfile (a buffered reader) and wfile",
         lambda: {"rfile", "wfile", "makefile"} <= _names(protocol.setup)),
        ("eventlet.wsgi.server(sock, site, max_size=, protocol=, log_output=, debug=)",
         lambda: _binds(wsgi.server, None, None, max_size=1, protocol=protocol, log_output=False, debug=False)),
    ]


def _gevent_guards() -> list[Requirement]:
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler

    handler = pywsgi.WSGIHandler
    return [
        ("gevent.pywsgi.WSGIHandler.handle_one_request: read_request(), handle_one_response(), response_length",
         lambda: {"read_request", "handle_one_response", "response_length"} <= _names(handler.handle_one_request)),
        ("gevent.pywsgi.WSGIHandler.read_request(raw_requestline) parses the head with MessageClass(rfile, 0)",
         lambda: _binds(handler.read_request, None, "GET / HTTP/1.1") and "MessageClass" in _names(
             handler.read_request)),
        ("gevent.pywsgi.WSGIHandler._send_error_response_if_possible(error_code), called by handle_error",
         lambda: _binds(handler._send_error_response_if_possible, None, 500)
         and "_send_error_response_if_possible" in _names(handler.handle_error)),
        ("geventwebsocket WebSocketHandler.upgrade_websocket() from run_application, SUPPORTED_VERSIONS",
         lambda: "upgrade_websocket" in _names(WebSocketHandler.run_application)
         and all(isinstance(v, str) for v in WebSocketHandler.SUPPORTED_VERSIONS)),
        ("gevent.pywsgi.WSGIServer(listener, application, handler_class=, log=)",
         lambda: _binds(pywsgi.WSGIServer, None, None, handler_class=handler, log=None)),
    ]


def lean_buffers_requirements() -> list[Requirement]:
    """httpserver.py: eventlet's HttpProtocol buffer sizes, as class attributes its setup() reads."""
    from eventlet import wsgi

    protocol = wsgi.HttpProtocol
    return [
        ("eventlet.wsgi.HttpProtocol.rbufsize and wbufsize (ints), read by setup()",
         lambda: isinstance(protocol.rbufsize, int) and isinstance(protocol.wbufsize, int)
         and {"rbufsize", "wbufsize"} <= _names(protocol.setup)),
    ]


PARTS: dict[str, Part] = {part.name: part for part in (
    Part("takeover", "eventlet's WSGI server and hub, python-engineio's sockets, wsproto (fanout.py)",
         "every stream on the ordinary queued path, as with DIRECT_WRITES=0", takeover_requirements),
    Part("gevent-takeover", "gevent's pywsgi.WSGIHandler (the end of a response) and hub, gevent-websocket, "
         "python-engineio's sockets, wsproto (fanout.py)",
         "every stream under gevent on the ordinary queued path, as with DIRECT_WRITES=0",
         gevent_takeover_requirements),
    Part("rooms", "python-socketio's BaseManager.basic_* and its client state (rooms.py)",
         "python-socketio's stock client manager, whose disconnect scans every room", rooms_requirements),
    Part("connect-events", "python-socketio's manager.is_pre_connected and is_connected (streams.py)",
         "a client's own 'connect' event is told by the stream hub's record; every 'disconnect' is taken for a "
         "real one and ends the connection", connect_events_requirements),
    Part("malformed-packet-close", "python-engineio's message handler (fanout.close_on_malformed_packets)",
         "python-socketio logs and drops a packet that does not parse; the connection stays",
         malformed_packet_requirements),
    Part("ratelimit-sweep", "limits' MemoryStorage.__schedule_expiry (ratelimit.SweptMemoryStorage)",
         "limits' stock MemoryStorage, with a sweep timer 10 ms after every counted write",
         ratelimit_sweep_requirements),
    Part("http-guards", "eventlet's HttpProtocol or gevent's WSGIHandler internals (httpserver.py)",
         "the server's plain request handler: NO deadline for request heads (HEADER_TIMEOUT_SECONDS) or for idle "
         "kept-alive connections (KEEPALIVE_IDLE_SECONDS), and the server's own error answers",
         http_guards_requirements, level=logging.ERROR),
    Part("lean-buffers", "eventlet's HttpProtocol.rbufsize and wbufsize (httpserver.py)",
         "eventlet's default buffer sizes (8 + 16 KiB per connection)", lean_buffers_requirements),
)}


class Fences:
    """The self-check of one app: which parts run on their fallback, and what each found missing."""

    def __init__(self, forced: Iterable[str] = ()) -> None:
        forced = set(forced)
        self.forced = set(PARTS) if "all" in forced else forced
        self.fallbacks: dict[str, list[str]] = {}  # part -> what is missing
        self._checked: dict[str, bool] = {}

    def check(self, name: str, *context: Any) -> bool:
        """Whether part name may run: every internal it relies on is there; once per part.

        When not, one line is logged naming the part, its fallback and what is
        missing, and the part counts in library_fallbacks: the caller runs the fallback.
        """
        if name not in self._checked:
            part = PARTS[name]
            missing = [FORCED] if name in self.forced else _missing(part.requirements(*context))
            self._checked[name] = not missing
            if missing:
                self.fallbacks[name] = missing
                logger.log(part.level, "library internals: part %r (%s) runs on its fallback: %s; missing: %s",
                           name, part.relies_on, part.fallback, "; ".join(missing))
        return self._checked[name]

    def gauge(self) -> Collector:
        """The collector of library_fallbacks{part}: 1 for a part on its fallback, 0 for every other part."""
        return _FallbackGauge(self)


class _FallbackGauge(Collector):
    def __init__(self, fences: Fences) -> None:
        self.fences = fences

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "library_fallbacks", "1 when a part that relies on a library's internals runs on its public-API "
            "fallback (the self-check at start found an internal missing), else 0.", labels=["part"])
        for name in PARTS:
            family.add_metric([name], 1.0 if name in self.fences.fallbacks else 0.0)
        yield family


def of(app: Any) -> Fences:
    """The app's self-check (app.extensions["fences"]), made on first use from its SELF_CHECK_FAIL setting."""
    fences = app.extensions.get("fences")
    if fences is None:
        fences = app.extensions["fences"] = Fences(app.config.get("SELF_CHECK_FAIL") or ())
    return fences


def as_part_names(value: str) -> tuple[str, ...]:
    """SELF_CHECK_FAIL: part names, comma-separated, or all."""
    names = tuple(item.strip() for item in value.split(",") if item.strip())
    unknown = [name for name in names if name != "all" and name not in PARTS]
    if unknown:
        raise ValueError(f"expected part names among all, {', '.join(PARTS)}")
    return names
