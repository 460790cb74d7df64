"""The committed event, and every wire encoding of it: SSE lines, an HTTP/1.1 chunk, a Socket.IO packet.

Every layer uses it: the store writes and reads events, delivery is told of
them, the live streams send them; none of them needs another layer for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Event:
    """A committed event: its id, whom it concerns, and its payload JSON, encoded once."""

    id: int
    task_id: str
    user_email: str
    data: str

    @cached_property
    def sse_frame(self) -> bytes:
        """The event as Server-Sent Events lines, encoded once for every stream that sends it."""
        return sse_frames(((self.id, self.data),))

    @cached_property
    def sse_chunk(self) -> bytes:
        """sse_frame as one chunk of a chunked HTTP/1.1 response, for streams written straight to their socket."""
        return http_chunk(self.sse_frame)

    @cached_property
    def socketio_packet(self) -> str:
        """The Socket.IO EVENT packet `task_update` carrying the event, encoded once for every client."""
        return f'2["task_update",{self.data}]'


def sse_frames(rows: Iterable[tuple[int, str]]) -> bytes:
    """Events as (id, payload JSON) in Server-Sent Events lines: `id:`, `data:` and a blank line each."""
    return "".join([f"id: {event_id}\ndata: {data}\n\n" for event_id, data in rows]).encode()


def http_chunk(data: bytes) -> bytes:
    """data as one chunk of an HTTP/1.1 chunked response (eventlet streams responses that way)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
