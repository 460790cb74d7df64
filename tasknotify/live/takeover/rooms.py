"""Socket.IO client managers that know each client's rooms, so a client leaving costs its own rooms only.

python-socketio's manager finds a leaving client's rooms by copying and
scanning every room of the namespace, and every client has a room of its own:
with N clients connected, each disconnect costs N, and N clients leaving at
once (a restart of a proxy, a network blip) cost N². Measured here: 5 000
Socket.IO clients dropping together held the server busy for 5 s, every other
stream stalled meanwhile.

The managers here override python-socketio's undocumented `basic_*` methods
and read its client state; fences.py checks both at start, and
`client_manager(..., indexed=False)` is the stock manager they fall back to.
"""

from __future__ import annotations

from typing import Any

import socketio

Room = Any  # a room name; None is the room of every connected client


class RoomIndex:
    """A mixin for a python-socketio client manager: each client's rooms, kept beside the manager's own index."""

    rooms: dict[str, dict[Room, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rooms_of: dict[tuple[str, str], set[Room]] = {}  # (namespace, sid) -> its rooms

    def basic_enter_room(self, sid: str, namespace: str, room: Room, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Room) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        own = self._rooms_of.get((namespace, sid))
        if own is not None:
            own.discard(room)
            if not own:
                del self._rooms_of[(namespace, sid)]

    @property
    def indexed_clients(self) -> int:
        """How many clients the index holds rooms of: none once every client has left."""
        return len(self._rooms_of)

    def get_rooms(self, sid: str, namespace: str) -> list[Room]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]

    def basic_disconnect(self, sid: str, namespace: str, **_kwargs: Any) -> None:
        # What upstream's does, without its scan of every room.
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]


class IndexedManager(RoomIndex, socketio.Manager):
    """The in-process client manager."""


class IndexedRedisManager(RoomIndex, socketio.RedisManager):
    """The client manager of several processes sharing Redis."""


def client_manager(redis_url: str | None, channel: str, indexed: bool = True) -> socketio.Manager:
    """The Socket.IO client manager: shared through Redis when redis_url is given, else in this process.

    indexed=False gives python-socketio's stock manager (the fallback when the self-check fails).
    """
    if redis_url:
        return (IndexedRedisManager if indexed else socketio.RedisManager)(redis_url, channel=channel)
    return IndexedManager() if indexed else socketio.Manager()
