"""Publish/subscribe of committed events to the live streams (SSE and Socket.IO).

A broker never blocks a publisher: each subscription has a bounded queue, and a
subscriber that falls that far behind is closed; it resumes from its last event
id, which the event log replays.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

from tasknotify.events import Event

logger = logging.getLogger("broker")


class EndReason(StrEnum):
    """Why a subscription or a live connection ended (the logs say it; SubscriptionClosed carries it)."""

    CLOSED = "closed"  # by its owner
    FELL_BEHIND = "reader fell behind"  # its queue, or its socket's backlog, overflowed: it resumes by event id
    GONE = "client went away"
    CLIENT_CLOSED = "client closed"  # with a websocket close frame
    PROTOCOL_ERROR = "protocol error"
    TOKEN_EXPIRED = "token expired"
    SERVER_CLOSED = "closed by the server"
    BROKER_RECONNECTED = "broker reconnected"  # events may have passed while the broker was away
    FILTER_FAILED = "subscription filter failed"


class SubscriptionClosed(Exception):
    """The subscription ended: closed by its owner, by the broker, or because its reader fell behind."""

    def __init__(self, reason: EndReason) -> None:
        super().__init__(reason)
        self.reason = reason


_CLOSED = object()


class Subscription:
    """A bounded queue of events for one reader."""

    def __init__(self, broker: Detaches, maxsize: int, accepts: Callable[[Event], bool] | None) -> None:
        self._broker = broker
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._accepts = accepts
        self._closed_reason: EndReason | None = None

    def offer(self, event: Event) -> None:
        """Queue an event without waiting; a full queue closes the subscription."""
        if self._accepts is not None and not self._accepts(event):
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.close(EndReason.FELL_BEHIND)

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when timeout passes first; SubscriptionClosed once closed."""
        if self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason)
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _CLOSED or self._closed_reason is not None:
            raise SubscriptionClosed(self._closed_reason or EndReason.CLOSED)
        return item  # type: ignore[return-value]

    def close(self, reason: EndReason = EndReason.CLOSED) -> None:
        """End the subscription, once: its broker lets it go and a reader waiting in get() is woken."""
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._broker.detach(self)
        try:
            self._queue.put_nowait(_CLOSED)  # wakes a reader waiting in get()
        except queue.Full:
            pass  # a full queue means the reader is not waiting


class Detaches(Protocol):
    """The broker a Subscription belongs to, as far as the subscription needs it."""

    def detach(self, reader: Subscription) -> None: ...


class Reader(Protocol):
    """Whatever the broker hands events to: a Subscription, or a stream that writes them out itself."""

    def offer(self, event: Event) -> None: ...

    def close(self) -> None: ...


class Broker(Protocol):
    """What the API (publish) and the streams (subscribe, attach) need of a broker."""

    def publish(self, event: Event) -> None: ...

    def subscribe(self, accepts: Callable[[Event], bool] | None = None, *,
                  user_email: str | None = None) -> Subscription: ...

    def attach(self, reader: Reader, *, user_email: str | None = None) -> None: ...

    def detach(self, reader: Reader) -> None: ...

    def ping(self) -> None:
        """Raise BrokerUnavailable when the broker cannot carry events (/readyz asks)."""
        ...

    def close(self) -> None: ...


class SharedBroker(Protocol):
    """A broker that several processes share (Redis): relayed into each process by RelayedBroker."""

    def publish(self, event: Event) -> None: ...

    def subscribe(self, accepts: Callable[[Event], bool] | None = None) -> Subscription: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class InMemoryBroker:
    """Fan-out inside one process: single process only (several processes need a shared broker).

    Subscriptions are indexed by the user they are limited to, so an event
    costs work only for the readers who may see it.
    """

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._lock = threading.Lock()
        # user_email (None: every user) -> readers; replaced, never changed in place,
        # so publish reads it without taking the lock.
        self._by_user: dict[str | None, tuple[Reader, ...]] = {}
        self._users: dict[Reader, str | None] = {}

    def publish(self, event: Event) -> None:
        index = self._by_user
        for reader in index.get(None, ()):
            reader.offer(event)
        for reader in index.get(event.user_email, ()):
            reader.offer(event)

    def subscribe(self, accepts: Callable[[Event], bool] | None = None, *,
                  user_email: str | None = None) -> Subscription:
        """A subscription to every event, or only to user_email's events when given."""
        subscription = Subscription(self, self._queue_size, accepts)
        self.attach(subscription, user_email=user_email)
        return subscription

    def attach(self, reader: Reader, *, user_email: str | None = None) -> None:
        """Offer reader every event, or only user_email's events when given, until detached."""
        with self._lock:
            index = dict(self._by_user)
            index[user_email] = (*index.get(user_email, ()), reader)
            self._by_user = index
            self._users[reader] = user_email

    def ping(self) -> None:
        """Nothing to reach: an in-process broker is up while the process is."""

    def close(self) -> None:
        """Close every subscription; idempotent."""
        for readers in list(self._by_user.values()):
            for reader in readers:
                reader.close()
                self.detach(reader)

    @property
    def subscriber_count(self) -> int:
        return len(self._users)

    def detach(self, reader: Reader) -> None:
        """Stop offering events to reader; idempotent."""
        with self._lock:
            if reader not in self._users:
                return
            user = self._users.pop(reader)
            index = dict(self._by_user)
            remaining = tuple(r for r in index.get(user, ()) if r is not reader)
            if remaining:
                index[user] = remaining
            else:
                index.pop(user, None)
            self._by_user = index


class BrokerUnavailable(Exception):
    """The shared broker cannot be reached."""


class EventLog(Protocol):
    def last_event_id(self) -> int: ...

    def events_after(self, after_id: int, *, until_id: int | None = None, limit: int = 1000) -> list[Event]: ...


class RelayedBroker:
    """A broker shared by processes (Redis), relayed into this process in event-id order.

    Events from different processes may cross on the way (process A commits
    event 10, process B commits 11, B's message arrives first). The store
    commits events in id order, so when 11 arrives, 10 is already in the event
    log: the relay reads what it has not seen from the log, publishes locally
    in order, and skips the late copy. After the shared broker reconnects, the
    relay catches up from the log the same way, so local readers see no gap.
    """

    def __init__(self, remote: SharedBroker, log: EventLog, queue_size: int = 1000) -> None:
        self.remote = remote
        self.log = log
        self.local = InMemoryBroker(queue_size)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, event: Event) -> None:
        self.remote.publish(event)

    def subscribe(self, accepts: Callable[[Event], bool] | None = None, *,
                  user_email: str | None = None) -> Subscription:
        self.start()
        return self.local.subscribe(accepts, user_email=user_email)

    def attach(self, reader: Reader, *, user_email: str | None = None) -> None:
        self.start()
        self.local.attach(reader, user_email=user_email)

    def detach(self, reader: Reader) -> None:
        self.local.detach(reader)

    def start(self) -> None:
        """Start relaying (idempotent; subscribe starts it too)."""
        with self._lock:
            if self._thread is not None:
                return
            subscription = self.remote.subscribe()
            position = self.log.last_event_id()
            self._thread = threading.Thread(target=self._relay, args=(subscription, position),
                                            name="broker-relay", daemon=True)
            self._thread.start()

    def _relay(self, subscription: Subscription, position: int) -> None:
        while not self._stopping.is_set():
            try:
                event = subscription.get(timeout=1.0)
            except SubscriptionClosed as closed:
                if self._stopping.is_set():
                    return
                logger.warning("shared broker subscription closed (%s): catching up from the event log", closed.reason)
                subscription = self._resubscribe()
                position = self._catch_up(position, None)
                continue
            if event is None or event.id <= position:
                continue
            if event.id == position + 1:
                self.local.publish(event)
                position = event.id
            else:
                position = self._catch_up(position, event.id)
        subscription.close()

    def _resubscribe(self) -> Subscription:
        while True:
            try:
                return self.remote.subscribe()
            except BrokerUnavailable:
                if self._stopping.wait(1.0):
                    raise

    def _catch_up(self, position: int, until_id: int | None) -> int:
        """Publish the logged events after position (up to until_id) locally; return the new position."""
        while True:
            batch = self.log.events_after(position, until_id=until_id, limit=1000)
            for event in batch:
                self.local.publish(event)
                position = event.id
            if len(batch) < 1000:
                return position

    def ping(self) -> None:
        """Raise BrokerUnavailable when the shared broker cannot be reached."""
        self.remote.ping()

    def close(self) -> None:
        """Stop relaying and close both brokers; idempotent."""
        self._stopping.set()
        self.remote.close()
        self.local.close()

    @property
    def subscriber_count(self) -> int:
        return self.local.subscriber_count


class WakeUps:
    """A wake-up for each event any process publishes: what wakes `flask worker`'s workers through a shared broker.

    It subscribes at the first wait, in the thread that waits; after a
    subscription is cut (events may have passed unseen) it says so once and
    subscribes again.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._subscription: Subscription | None = None

    def wait(self, timeout: float) -> bool:
        """Whether an event came within timeout, or events may have passed unseen."""
        if self._subscription is None:
            self._subscription = self._broker.subscribe()
        try:
            return self._subscription.get(timeout=timeout) is not None
        except SubscriptionClosed:
            self._subscription = self._broker.subscribe()
            return True

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
