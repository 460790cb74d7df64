"""Publish/subscribe of committed events to the live streams (SSE and Socket.IO).

A broker never blocks a publisher: each subscription has a bounded queue, and a
subscriber that falls that far behind is closed; it resumes from its last event
id, which the event log replays.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Event:
    """A committed event: its id, whom it concerns, and its payload JSON, encoded once."""

    id: int
    task_id: str
    user_email: str
    data: str


class SubscriptionClosed(Exception):
    """The subscription ended: closed by its owner, by the broker, or because its reader fell behind."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_CLOSED = object()


class Subscription:
    """A bounded queue of events for one reader."""

    def __init__(self, broker: InMemoryBroker, maxsize: int, accepts: Callable[[Event], bool] | None) -> None:
        self._broker = broker
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._accepts = accepts
        self._closed_reason: str | None = None

    def offer(self, event: Event) -> None:
        """Queue an event without waiting; a full queue closes the subscription."""
        if self._accepts is not None and not self._accepts(event):
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._close("reader fell behind")

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when timeout passes first; SubscriptionClosed once closed."""
        if self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason)
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _CLOSED or self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason or "closed")
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._close("closed")

    def _close(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._broker._remove(self)
        try:
            self._queue.put_nowait(_CLOSED)  # wakes a reader waiting in get()
        except queue.Full:
            pass  # a full queue means the reader is not waiting


class Broker(Protocol):
    def publish(self, event: Event) -> None: ...

    def subscribe(self, accepts: Callable[[Event], bool] | None = None) -> Subscription: ...

    def close(self) -> None: ...


class InMemoryBroker:
    """Fan-out inside one process: single process only (several processes need a shared broker)."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._lock = threading.Lock()
        # Copied on change, so publish reads it without taking the lock.
        self._subscriptions: tuple[Subscription, ...] = ()

    def publish(self, event: Event) -> None:
        for subscription in self._subscriptions:
            subscription.offer(event)

    def subscribe(self, accepts: Callable[[Event], bool] | None = None) -> Subscription:
        subscription = Subscription(self, self._queue_size, accepts)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def close(self) -> None:
        """Close every subscription; idempotent."""
        for subscription in self._subscriptions:
            subscription.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
