"""The live streams: Server-Sent Events on /task_updates and Socket.IO `task_update` events.

Both read the same event log and the same broker. A client that gives the id
of the last event it saw gets every later event once, in order: first the
missed ones from the `events` table, then live ones, with no gap between the
two and no duplicate.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from engineio import json as engineio_json
from flask import Blueprint, Flask, Response, current_app, request
from flask_socketio import ConnectionRefusedError as SocketIORefused
from flask_socketio import SocketIO

from tasknotify import fences
from tasknotify.errors import APIError
from tasknotify.events import Event
from tasknotify.ids import EVENT_ID_RULE, TASK_ID_RULE, event_id, is_task_id
from tasknotify.live.broker import Broker, SubscriptionClosed
from tasknotify.live.takeover.fanout import (
    LiveStreams,
    LiveWebSockets,
    SSEWriter,
    close_on_malformed_packets,
    note_chunked,
    stream_socket,
)
from tasknotify.live.takeover.rooms import client_manager
from tasknotify.store.store import Store
from tasknotify.tokens import TokenError, Viewer, viewer_for_token

logger = logging.getLogger("streams")

REPLAY_BATCH = 1000
# The event names the Socket.IO protocol keeps for itself: a client never sends them as events.
RESERVED_EVENTS = ("connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener")

bp = Blueprint("streams", __name__)

# The SSE request's viewer, which must hold the scope given (its token may be in ?access_token=: EventSource
# sends no header); APIError (401, 403, 503) otherwise. The API's (api/auth.py), given by factory.py.
Authenticate = Callable[[str], Viewer]


def parse_event_id(value: Any, name: str) -> int | None:
    """An event id given by a client (ids.event_id), or None when absent; APIError(422) when it is not one."""
    if value is None or value == "":
        return None
    try:
        return event_id(value)
    except ValueError as exc:
        raise APIError(422, f"{name} {EVENT_ID_RULE}", details=[{"field": name, "message": str(exc)}]) from None


def parse_task_ids(values: list[str]) -> frozenset[str] | None:
    bad = [v for v in values if not is_task_id(v)]
    if bad:
        raise APIError(422, TASK_ID_RULE,
                       details=[{"field": "task_id", "message": f"invalid task id {v!r}"} for v in bad])
    return frozenset(values) or None



def replay(store: Store, after_id: int, viewer: Viewer, task_ids: frozenset[str] | None,
           until_id: int | None = None) -> Iterator[Event]:
    """Events after after_id from the log, in id order, read in batches."""
    while True:
        batch = store.events_after(after_id, task_ids=task_ids, user_email=viewer.only_email,
                                   until_id=until_id, limit=REPLAY_BATCH)
        yield from batch
        if len(batch) < REPLAY_BATCH:
            return
        after_id = batch[-1].id


def retry_delay(config: Mapping[str, Any]) -> int:
    """The `retry:` delay of one SSE stream, in ms: SSE_RETRY_MS plus a random part of SSE_RETRY_SPREAD_MS.

    When a server restarts, every EventSource reconnects after its own stream's delay, so the
    clients come back spread over the spread rather than all in the same second.
    """
    return config["SSE_RETRY_MS"] + random.randint(0, config["SSE_RETRY_SPREAD_MS"])


def sse_events(hub: StreamHub, *, after_id: int | None, viewer: Viewer, task_ids: frozenset[str] | None,
               heartbeat: float, retry_ms: int, slot: StreamSlot, handover: Any = None,
               announce_start: bool = False) -> Iterator[bytes]:
    """The byte stream of one SSE response: retry line, replay, then live events and heartbeats.

    With announce_start (?stream_start=1), the opening block is also a `stream_start`
    event naming the id the stream starts after, which EventSource shows to the page.

    With handover (fanout.stream_socket: eventlet, or our gevent handler), the live part is
    written straight to the socket (fanout.SSEWriter): the response ends after the replay,
    leaving the connection open to the writer, and the stream's slot is given back when the
    writer ends.
    """
    store = hub.store
    # Subscribe before reading the log: an event committed after the read is then
    # held for this stream, and the id check drops what the read already sent.
    accepts = None if task_ids is None else (lambda event: event.task_id in task_ids)
    writer = None
    if handover is not None:
        # on_end is given the writer, not a closure over it: a closed stream's objects hold no
        # reference cycle, and reference counting frees them at once (see heap.py).
        writer = SSEWriter(handover, accepts, hub.queue_size, on_end=functools.partial(hub.sse_ended, slot=slot))
        hub.broker.attach(writer, user_email=viewer.only_email)
    else:
        subscription = hub.broker.subscribe(accepts, user_email=viewer.only_email)
    hub.count_sse(+1)
    try:
        last_id = after_id
        if after_id is None:
            # Where the stream starts, as an id without data: the browser's EventSource
            # resumes from it after a disconnect even if no event came in between.
            last_id = store.last_event_id()
            yield f"retry: {retry_ms}\nid: {last_id}\n{_start(announce_start, last_id)}: connected\n\n".encode()
        else:
            yield f"retry: {retry_ms}\n{_start(announce_start, after_id)}: connected\n\n".encode()
            # One write per batch read from the log, not one per event.
            while True:
                count, last_id, frames = store.sse_frames_after(
                    last_id, task_ids=task_ids, user_email=viewer.only_email, limit=REPLAY_BATCH)
                if count:
                    yield frames
                if count < REPLAY_BATCH:
                    break
        if writer is not None:
            if writer.closed_reason is None:
                slot.go_live()
                writer.go_live(last_id, hub.live_sse, viewer.expires_at)
            return
        while True:
            timeout = heartbeat
            if viewer.expires_at is not None:
                timeout = min(heartbeat, viewer.expires_at - time.time())
                if timeout <= 0:
                    return  # the token expired: the client must come back with a new one
            try:
                event = subscription.get(timeout=timeout)
            except SubscriptionClosed as closed:
                logger.info("SSE stream ended: %s", closed.reason)
                return
            if event is None:
                if viewer.expires_at is not None and viewer.expires_at <= time.time():
                    return
                yield b": heartbeat\n\n"
            elif event.id > last_id:
                yield event.sse_frame
                last_id = event.id
    finally:
        if writer is None:
            subscription.close()
            hub.count_sse(-1)
        elif slot.state is not SlotState.LIVE:
            writer.close()
            hub.sse_ended(writer, slot)


def _start(announce: bool, last_id: int) -> str:
    return f'event: stream_start\ndata: {{"last_event_id": {last_id}}}\n' if announce else ""


class SlotState(Enum):
    STREAMING = auto()  # the response streams the events: its end gives the place back
    LIVE = auto()  # the response has ended but its stream goes on (fanout.SSEWriter): the writer's end gives it back
    RELEASED = auto()


class StreamSlot:
    """An open stream's place under its user's cap, given back once, when the stream ends."""

    def __init__(self, hub: StreamHub, viewer: Viewer) -> None:
        self.hub = hub
        self.viewer = viewer
        self.state = SlotState.STREAMING

    def go_live(self) -> None:
        if self.state is SlotState.STREAMING:
            self.state = SlotState.LIVE

    def release(self) -> None:
        if self.state is not SlotState.RELEASED:
            self.state = SlotState.RELEASED
            self.hub.release(self.viewer)

    def response_closed(self) -> None:
        if self.state is SlotState.STREAMING:
            self.release()


@bp.get("/task_updates")
def task_updates() -> Response:
    """Server-Sent Events: every visible event, resumable with Last-Event-ID."""
    streams: StreamHub = current_app.extensions["streams"]
    viewer = current_app.extensions["stream_authenticate"]("updates:read")
    after_id = parse_event_id(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    if after_id is None:
        after_id = parse_event_id(request.args.get("last_event_id"), "last_event_id")
    task_ids = parse_task_ids(request.args.getlist("task_id"))
    if streams.full:
        raise APIError(503, f"the server holds as many streams as it may ({streams.max_streams})",
                       headers={"Retry-After": "5"})
    if not streams.acquire(viewer):
        raise APIError(429, f"at most {streams.max_per_user} streams may be open per user",
                       headers={"Retry-After": "5"})
    config = current_app.config
    slot = StreamSlot(streams, viewer)
    body = sse_events(streams, after_id=after_id, viewer=viewer, task_ids=task_ids,
                      heartbeat=config["SSE_HEARTBEAT_SECONDS"], retry_ms=retry_delay(config), slot=slot,
                      handover=stream_socket(request.environ) if streams.direct_writes else None,
                      announce_start=request.args.get("stream_start") == "1")
    # No stream_with_context: the stream needs nothing of the request, so an idle
    # stream does not keep the request context alive.
    response = Response(
        body,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.call_on_close(slot.response_closed)
    return response


@dataclass
class _Client:
    viewer: Viewer
    task_ids: dict[str, None] = field(default_factory=dict)  # a set that keeps the order of subscribing
    attached: bool = False

    @property
    def room_prefix(self) -> str:
        # A reader limited to its own tasks joins rooms under its user, so a task
        # that changes owner is never sent to its former owner.
        only = self.viewer.only_email
        return "" if only is None else f"user:{only}/"


class SubscribeRefused(Exception):
    """A subscribe that changes nothing: the connection is at its cap, or gone."""


class HubState(Enum):
    NEW = auto()
    RUNNING = auto()
    STOPPED = auto()


class StreamHub:
    """Relays broker events to Socket.IO rooms, one emit per event for all its clients.

    Rooms: "all" holds the readers of every task (admins, or everyone with auth
    off) and "task:<id>" those that subscribed to chosen tasks; a reader limited
    to its own tasks joins "user:<email>/all" or "user:<email>/task:<id>" instead.
    """

    def __init__(self, socketio: SocketIO, store: Store, broker: Broker, max_per_user: int = 20,
                 queue_size: int = 1000, direct_writes: bool = True, heartbeat: float = 15.0,
                 max_streams: int = 10000, max_subscriptions: int = 100) -> None:
        self.socketio = socketio
        self.store = store
        self.broker = broker
        self.max_per_user = max_per_user
        self.max_subscriptions = max_subscriptions  # per connection
        # Streams taken over from eventlet (fanout.py) leave its pool of handlers, which
        # MAX_CONNECTIONS bounds: this bounds them, as many again.
        self.max_streams = max_streams
        self.queue_size = queue_size
        # Off with DIRECT_WRITES=0, outside eventlet and gevent, and when the self-check finds the
        # take-over's internals missing (fences.py): every stream then has its queue.
        self.direct_writes = direct_writes
        self._websockets = LiveWebSockets(socketio.server, queue_size) if direct_writes else None
        self.live_sse = LiveStreams(heartbeat)
        self._per_user: Counter[str] = Counter()
        self._expiries: list[tuple[float, str]] = []  # (expires_at, sid), a heap
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._position = 0  # the id of the last event emitted to the rooms
        self._to_attach: deque[tuple[str, int]] = deque()  # (sid, stream start) of clients just connected
        self._attaching = False  # a task attaches them (_attach_connected)
        self._stopping = threading.Event()
        self._state = HubState.NEW
        self._sse_open = 0

    def acquire(self, viewer: Viewer) -> bool:
        """Count an opening stream (SSE or Socket.IO) against its user's cap; False when the cap is reached."""
        if viewer.email is None:
            return True  # auth is off: there is no user to count
        with self._lock:
            if self._per_user[viewer.email] >= self.max_per_user:
                return False
            self._per_user[viewer.email] += 1
            return True

    def release(self, viewer: Viewer) -> None:
        if viewer.email is None:
            return
        with self._lock:
            self._per_user[viewer.email] -= 1
            if self._per_user[viewer.email] <= 0:
                del self._per_user[viewer.email]

    def count_sse(self, change: int) -> None:
        with self._lock:
            self._sse_open += change

    def sse_ended(self, writer: SSEWriter, slot: StreamSlot) -> None:
        """What an SSE stream written by an SSEWriter gives back when it ends."""
        logger.info("SSE stream ended: %s", writer.closed_reason)
        self.broker.detach(writer)
        self.count_sse(-1)
        slot.release()

    @property
    def full(self) -> bool:
        return self._sse_open + len(self._clients) >= self.max_streams

    @property
    def counts(self) -> dict[str, int]:
        """Open streams by transport."""
        return {"sse": self._sse_open, "socketio": len(self._clients)}

    def start(self) -> None:
        """Start emitting events and the background tasks; once (a stopped hub stays stopped)."""
        if self._state is not HubState.NEW:
            return
        self._state = HubState.RUNNING
        # The hub is a broker reader: each event is emitted to the rooms by whoever
        # publishes it (after its commit, in id order), not handed to a green thread of
        # ours first, which ran only once the POST's answer was written.
        self._position = self.store.last_event_id()
        self.broker.attach(self)
        self.socketio.start_background_task(self._expire_tokens)
        self.socketio.start_background_task(self.live_sse.run, self._stopping)

    def stop(self) -> None:
        self._state = HubState.STOPPED
        self._stopping.set()
        self.broker.detach(self)
        self.live_sse.close()
        if self._websockets is not None:
            self._websockets.stop()

    def offer(self, event: Event) -> None:
        """Emit a committed event to the rooms that may see it (the broker calls this; nothing here waits)."""
        with self._lock:
            slow = self._emit(event) if event.id > self._position else []
        if slow:  # in a task of its own: disconnecting calls our disconnect handler, and the caller holds locks
            self.socketio.start_background_task(self._cut, slow)

    def close(self) -> None:
        """The broker closed: nothing more comes (the server is stopping)."""

    def _cut(self, eio_sids: list[str]) -> None:
        for eio_sid in eio_sids:
            logger.info("closing Socket.IO connection %s: it fell more than %s events behind",
                        eio_sid, self.queue_size)
            self._websockets.cut(eio_sid)  # type: ignore[union-attr]

    def _expire_tokens(self) -> None:
        while not self._stopping.wait(1.0):
            self._disconnect_expired()

    def _emit(self, event: Event) -> list[str]:
        """Send event to the rooms that may see it; return the Engine.IO ids of clients too far behind to keep."""
        user = f"user:{event.user_email}/"
        rooms = ["all", f"task:{event.task_id}", user + "all", f"{user}task:{event.task_id}"]
        self._position = event.id
        return self._send(event, rooms)

    def _send(self, event: Event, rooms: list[str]) -> list[str]:
        """event to the clients in rooms (a client's sid is a room of its own); the Engine.IO ids of those too far
        behind to keep."""
        if self._websockets is None or not self._websockets.enabled:
            # ignore_queue: every process relays the ordered event stream to its own clients.
            self.socketio.emit("task_update", json.loads(event.data), to=rooms, ignore_queue=True)
            return []
        return self._websockets.emit(rooms, event.socketio_packet)

    def _disconnect_expired(self) -> None:
        """Close the Socket.IO connections whose token has expired."""
        now, expired = time.time(), []
        with self._lock:
            while self._expiries and self._expiries[0][0] <= now:
                _, sid = heapq.heappop(self._expiries)
                if sid in self._clients:
                    expired.append(sid)
        for sid in expired:  # outside the lock: disconnecting calls our disconnect handler
            logger.info("closing Socket.IO connection %s: its token expired", sid)
            self.socketio.server.disconnect(sid, ignore_queue=True)

    # -- clients -------------------------------------------------------------

    def connect(self, sid: str, viewer: Viewer, last_event_id: int | None) -> None:
        """Add a client whose stream starts after last_event_id, or after the latest event when None."""
        with self._lock:
            self._clients[sid] = _Client(viewer=viewer)
            if viewer.expires_at is not None:
                heapq.heappush(self._expiries, (viewer.expires_at, sid))
            start = self._position if last_event_id is None else last_event_id
            self._to_attach.append((sid, start))
            idle, self._attaching = not self._attaching, True
        # After the connect handler has returned, so the client has its CONNECT packet first; one
        # task for the clients that connect meanwhile (a reconnect storm), not one each.
        if idle:
            self.socketio.start_background_task(self._attach_connected)

    def _attach_connected(self) -> None:
        """Attach the clients that connected, in order, until none is left; a client with a replay in a task of
        its own, so that it holds up no other."""
        while True:
            with self._lock:
                if not self._to_attach:
                    self._attaching = False
                    return
                sid, start = self._to_attach.popleft()
                replays = start < self._position
            try:
                if replays:
                    self.socketio.start_background_task(self._attach, sid, start)
                else:
                    self._attach(sid, start)
            except Exception:  # noqa: BLE001 - one client's failure must not leave the next ones unattached
                logger.exception("attaching Socket.IO client %s failed", sid)

    def _attach(self, sid: str, last_event_id: int) -> None:
        """Tell the client where its stream starts, replay what it missed, then put it in its rooms.

        `stream_start` comes first, so a client that has seen no event yet can resume
        from it; no event falls between the replay and the rooms.
        """
        self.socketio.emit("stream_start", {"last_event_id": last_event_id}, to=sid, ignore_queue=True)
        while True:
            with self._lock:
                client = self._clients.get(sid)
                if client is None:
                    return  # gone before we got to it
                if last_event_id >= self._position:
                    # Nothing more to replay: from here on the rooms bring every event.
                    for room in self._rooms(client):
                        self.socketio.server.enter_room(sid, room)
                    client.attached = True
                    return
                until_id, task_ids = self._position, frozenset(client.task_ids) or None
            # The log is read without the lock, which every event's emit takes; events
            # emitted meanwhile do not reach this client (not in its rooms yet) and are
            # replayed on the next turn.
            for event in replay(self.store, last_event_id, client.viewer, task_ids, until_id=until_id):
                # Not cut when it falls behind here, as it is by a live event: a long replay would
                # cut it again at every reconnection.
                self._send(event, [sid])
            last_event_id = until_id

    def holds(self, sid: str) -> bool:
        """Whether sid is a client that connected and has not left."""
        return sid in self._clients

    def disconnect(self, sid: str) -> None:
        with self._lock:
            client = self._clients.pop(sid, None)
            if len(self._expiries) > 2 * len(self._clients) + 64:
                # Mostly clients that left before their token expired: dropped now rather than
                # when it expires (hours, maybe), so that the heap keeps to the size of the open ones.
                self._expiries = [entry for entry in self._expiries if entry[1] in self._clients]
                heapq.heapify(self._expiries)
        if client is not None:
            self.release(client.viewer)

    def subscribe(self, sid: str, task_id: str) -> list[str]:
        """Watch only chosen tasks: the first subscribe leaves the all-tasks room. Returns the subscriptions.

        Costs one or two room changes whatever the number of subscriptions;
        SubscribeRefused past max_subscriptions.
        """
        with self._lock:
            client = self._client(sid)
            if task_id in client.task_ids:
                return list(client.task_ids)
            if len(client.task_ids) >= self.max_subscriptions:
                raise SubscribeRefused(f"at most {self.max_subscriptions} subscriptions per connection: "
                                       "unsubscribe from one first")
            client.task_ids[task_id] = None
            if client.attached:
                if len(client.task_ids) == 1:
                    self.socketio.server.leave_room(sid, client.room_prefix + "all")
                self.socketio.server.enter_room(sid, f"{client.room_prefix}task:{task_id}")
            return list(client.task_ids)

    def unsubscribe(self, sid: str, task_id: str) -> list[str]:
        """Stop watching a task; with none left the client watches all tasks again. Returns the subscriptions."""
        with self._lock:
            client = self._client(sid)
            if task_id in client.task_ids:
                del client.task_ids[task_id]
                if client.attached:
                    self.socketio.server.leave_room(sid, f"{client.room_prefix}task:{task_id}")
                    if not client.task_ids:
                        self.socketio.server.enter_room(sid, client.room_prefix + "all")
            return list(client.task_ids)

    def _client(self, sid: str) -> _Client:
        client = self._clients.get(sid)
        if client is None:  # an event that arrived as its connection ended
            raise SubscribeRefused("not connected")
        return client

    @staticmethod
    def _rooms(client: _Client) -> list[str]:
        if client.task_ids:
            return [f"{client.room_prefix}task:{task_id}" for task_id in client.task_ids]
        return [client.room_prefix + "all"]


class MalformedPacket(ValueError):
    """A Socket.IO packet whose JSON does not parse."""


class _PacketJSON:
    """Socket.IO's packet JSON (engineio.json), with a payload nested too deeply for the parser refused."""

    dumps = staticmethod(engineio_json.dumps)

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        try:
            return engineio_json.loads(text, **kwargs)
        except ValueError as exc:
            raise MalformedPacket(str(exc)) from None
        except RecursionError:  # the parser recurses once per level of nesting
            raise MalformedPacket("nested too deeply") from None


class _StreamTransports:
    """WSGI middleware for the two stream transports; it wraps Flask-SocketIO's, which copies the environ.

    SSE: eventlet's server holds streamed output back until 4 KiB gather unless
    the request's environ says otherwise, and an SSE client would see nothing;
    and the live events written straight to the socket must be framed as
    eventlet frames the rest of the response (chunked or not).

    Socket.IO over websocket: no permessage-deflate. Compressing every small
    event once per client costs more CPU than the bytes it saves, and each
    connection's compressor holds about 130 KB (Node's ws server leaves it off too).
    """

    def __init__(self, wsgi_app: Any, direct_writes: bool) -> None:
        self.wsgi_app = wsgi_app
        self.direct_writes = direct_writes  # only then are live events written past eventlet

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/task_updates":
            environ["eventlet.minimum_write_chunk_size"] = 0
            if self.direct_writes:
                note_chunked(environ, start_response)
        elif path.startswith("/socket.io"):
            environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask, store: Store, broker: Broker, authenticate: Authenticate) -> StreamHub:
    """Create the app's Socket.IO server and stream hub, and register the SSE route (authenticated by authenticate)."""
    app.extensions["stream_authenticate"] = authenticate
    allowed = set(app.config["CORS_ORIGINS"])

    def origin_allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None:
            return True  # not a browser: no cross-origin question
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        return origin == own or origin in allowed

    fence = fences.of(app)  # each reach into a library's internals only if its self-check passes
    manager = client_manager(app.config.get("REDIS_URL"), f"{app.config['REDIS_CHANNEL']}-socketio",
                             indexed=fence.check("rooms"))
    socketio = SocketIO(
        app,
        async_mode=app.config["ASYNC_MODE"],
        client_manager=manager,
        cors_allowed_origins=origin_allowed,
        logger=False,
        engineio_logger=False,
        ping_interval=app.config["SOCKETIO_PING_INTERVAL"],
        ping_timeout=app.config["SOCKETIO_PING_TIMEOUT"],
        json=_PacketJSON,
    )
    if fence.check("malformed-packet-close", socketio.server.eio):
        close_on_malformed_packets(socketio.server.eio, MalformedPacket)
    mode = app.config["ASYNC_MODE"]
    direct_writes = app.config["DIRECT_WRITES"] and (
        (mode == "eventlet" and fence.check("takeover", socketio.server))
        or (mode == "gevent" and fence.check("gevent-takeover", socketio.server)))
    hub = StreamHub(socketio, store, broker, app.config["MAX_STREAMS_PER_USER"],
                    queue_size=app.config["STREAM_QUEUE_SIZE"], direct_writes=direct_writes,
                    heartbeat=app.config["SSE_HEARTBEAT_SECONDS"], max_streams=app.config["MAX_CONNECTIONS"],
                    max_subscriptions=app.config["MAX_SUBSCRIPTIONS_PER_CONNECTION"])
    app.extensions["streams"] = hub
    _register_socketio_handlers(socketio, hub, by_manager=fence.check("connect-events", socketio.server.manager))
    app.register_blueprint(bp)
    app.wsgi_app = _StreamTransports(app.wsgi_app, direct_writes)  # type: ignore[method-assign]
    return hub


def _end_for_reserved_event(socketio: SocketIO, name: str) -> None:
    """End the connection of the current event, which a client sent under a name the protocol reserves."""
    sid = request.sid  # type: ignore[attr-defined]
    logger.warning("closing Socket.IO connection %s: it sent the reserved event %r", sid, name)
    # Runs our disconnect handler as a real disconnect, which gives the connection's place back.
    socketio.server.disconnect(sid, namespace=request.namespace, ignore_queue=True)  # type: ignore[attr-defined]


def _register_socketio_handlers(socketio: SocketIO, hub: StreamHub, by_manager: bool = True) -> None:
    """The Socket.IO handlers: connect and disconnect, subscribe and unsubscribe.

    python-socketio hands a client's event named "connect" or "disconnect" to
    the handlers of the real ones. The manager tells them apart: a real connect
    runs while the client is pending (manager.is_pre_connected), a real
    disconnect once it no longer counts as connected (manager.is_connected);
    a client's event is dispatched only while its sender is connected. Such an
    event ends its connection. One that runs after its connection began to end
    is taken for that disconnect, which is harmless: the hub forgets a
    connection once.

    Without by_manager (the self-check's fallback), a connect for a client the
    hub already holds is the client's own event, and every disconnect is taken
    for a real one: the hub forgets the client and its connection is ended.
    """
    manager = socketio.server.manager

    def real_connect(sid: str, namespace: str) -> bool:
        return manager.is_pre_connected(sid, namespace) if by_manager else not hub.holds(sid)

    @socketio.on("connect")
    def on_connect(auth: Any = None) -> None:
        if not real_connect(request.sid, request.namespace):  # type: ignore[attr-defined]
            _end_for_reserved_event(socketio, "connect")
            return
        auth = auth if isinstance(auth, dict) else {}
        try:
            viewer = viewer_for_token(auth.get("token"))
        except TokenError as exc:
            raise SocketIORefused(str(exc), {"code": exc.code}) from None
        if not viewer.has("updates:read"):
            raise SocketIORefused("the token lacks the scope 'updates:read'", {"code": "forbidden"})
        try:
            last_event_id = parse_event_id(auth.get("last_event_id"), "last_event_id")
        except APIError as exc:
            raise SocketIORefused(exc.message, {"code": exc.code}) from None
        if hub.full:
            raise SocketIORefused(f"the server holds as many streams as it may ({hub.max_streams})",
                                  {"code": "unavailable"})
        if not hub.acquire(viewer):
            raise SocketIORefused(f"at most {hub.max_per_user} streams may be open per user",
                                  {"code": "rate_limited"})
        hub.connect(request.sid, viewer, last_event_id)  # type: ignore[attr-defined]

    @socketio.on("disconnect")
    def on_disconnect(reason: Any = None) -> None:
        sid, namespace = request.sid, request.namespace  # type: ignore[attr-defined]
        if not by_manager:
            hub.disconnect(sid)
            # Nothing for a real disconnect, which has ended; a client's own event ends its connection.
            socketio.start_background_task(socketio.server.disconnect, sid, namespace=namespace, ignore_queue=True)
            return
        if manager.is_connected(sid, namespace):
            _end_for_reserved_event(socketio, "disconnect")
            return
        hub.disconnect(sid)

    def refuse(name: str) -> Callable[..., None]:
        def on_reserved(*_args: Any) -> None:
            _end_for_reserved_event(socketio, name)
        return on_reserved

    for name in RESERVED_EVENTS:
        if name not in ("connect", "disconnect"):  # no server event of these names: only a client sends them
            socketio.on(name)(refuse(name))

    @socketio.on("subscribe")
    def on_subscribe(data: Any = None) -> dict[str, Any]:
        return _subscription_change(hub.subscribe, data)

    @socketio.on("unsubscribe")
    def on_unsubscribe(data: Any = None) -> dict[str, Any]:
        return _subscription_change(hub.unsubscribe, data)


def _subscription_change(change: Callable[[str, str], list[str]], data: Any) -> dict[str, Any]:
    """The ack of a subscribe or unsubscribe: ok with the subscriptions, or not ok with the error."""
    task_id = data.get("task_id") if isinstance(data, dict) else None
    if not is_task_id(task_id):
        return {"ok": False, "error": TASK_ID_RULE}
    try:
        subscriptions = change(request.sid, task_id)  # type: ignore[attr-defined]
    except SubscribeRefused as refused:
        return {"ok": False, "error": str(refused)}
    return {"ok": True, "task_id": task_id, "subscriptions": subscriptions}
