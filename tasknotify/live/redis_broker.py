"""The broker shared by every process: events travel as JSON messages on a Redis pub/sub channel.

One listener thread per broker (named `redis-broker`) receives the channel's
messages and offers each to every local subscription, with the bounded-queue
semantics of broker.InMemoryBroker: a reader that falls behind is closed and
resumes from its last event id through the event log.

Pub/sub keeps nothing for a listener that is away. When the connection drops,
the listener reconnects with backoff; once it listens again, it closes every
subscription that existed while it was away, with the reason "broker
reconnected", so their readers resume from their last event id through the
event log (broker.RelayedBroker does that for the app). A subscription made
while the listener is not yet (or no longer) listening is closed the same way.

A publish never fails the caller (it runs after the event's commit): when
Redis does not take the message, the listener sends the newest such event again
once Redis answers, and readers drop what they already have by event id.

Plain redis-py on threads, with timeouts on every socket operation; under
eventlet's or gevent's monkey patching these are green threads and sockets.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.exceptions import RedisError
from redis.retry import Retry

from tasknotify.events import Event
from tasknotify.live.broker import BrokerUnavailable, EndReason, Subscription

logger = logging.getLogger("redis_broker")

RECONNECTED = EndReason.BROKER_RECONNECTED
_POLL_SECONDS = 0.5  # how long one read waits for a message, so the listener notices close() soon
_PING = "redis-broker"


class RedisBroker:
    """Fan-out between processes through Redis pub/sub; inside each process, to local subscriptions."""

    def __init__(
        self,
        url: str,
        channel: str = "task-events",
        queue_size: int = 1000,
        *,
        timeout: float = 2.0,
        health_seconds: float = 5.0,
        backoff_seconds: float = 0.1,
        backoff_max_seconds: float = 5.0,
        client_name: str = "redis-broker",
    ) -> None:
        """timeout bounds every connect and socket operation and how long a subscribe waits for the listener;
        health_seconds of silence make the listener PING Redis, and as many more without an answer end the
        connection; reconnection waits grow from backoff_seconds to backoff_max_seconds. The connections are
        named client_name + "-publisher" and "-listener" in Redis's CLIENT LIST."""
        self.channel = channel
        self._queue_size = queue_size
        self._timeout = timeout
        self._health_seconds = health_seconds
        self._backoff = (backoff_seconds, backoff_max_seconds)
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                   "socket_keepalive": True}
        # The publisher tries once more on a broken pooled connection; the listener sees every failure itself.
        self._publisher = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 1),
                                               client_name=f"{client_name}-publisher", **options)
        self._listener = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0),
                                              client_name=f"{client_name}-listener", **options)
        self._where = _describe(self._listener)

        self._lock = threading.Lock()
        # Copied on change, so the listener reads it without taking the lock.
        self._subscriptions: tuple[Subscription, ...] = ()
        self._stale: set[Subscription] = set()  # to close once listening again: they may have missed events
        self._live = threading.Event()  # the listener is subscribed to the channel
        self._stopping = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._delay = backoff_seconds
        self._down_since: float | None = None
        self._unsent: Event | None = None  # the newest event Redis did not take
        self._publish_paused_until = 0.0

    # -- the broker interface ------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Send the event to every process's listener; never raises (see the module's docstring)."""
        if self._closed:
            return
        if time.monotonic() < self._publish_paused_until:
            self._remember_unsent(event)  # Redis just failed: do not hold the caller for another timeout
            return
        try:
            self._publisher.publish(self.channel, encode(event))
        except RedisError as exc:
            self._publish_paused_until = time.monotonic() + 1.0
            self._remember_unsent(event)
            logger.warning("Redis did not take event %s (%s: %s); it will be sent again when Redis answers",
                           event.id, type(exc).__name__, exc)
            return
        with self._lock:
            if self._unsent is not None and self._unsent.id <= event.id:
                self._unsent = None  # a newer event arrived: readers catch up on the ones before it by id

    def subscribe(self, accepts: Callable[[Event], bool] | None = None) -> Subscription:
        """A new local subscription; waits (at most the timeout) until the listener is subscribed to Redis."""
        subscription = Subscription(self, self._queue_size, accepts)
        with self._lock:
            closed = self._closed
            if not closed:
                self._subscriptions = (*self._subscriptions, subscription)
        if closed:
            subscription.close()
            return subscription
        self.start()
        if not self._live.wait(self._timeout):
            with self._lock:
                if not self._live.is_set():
                    # It may miss what is published until the listener is back, which then closes it.
                    self._stale.add(subscription)
            logger.warning("subscribed while not listening to Redis (%s); the subscription will be closed "
                           "when the listener is back", self._where)
        return subscription

    def start(self) -> None:
        """Start the listener thread (idempotent; subscribe starts it too)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="redis-broker", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the listener, close every subscription and the Redis connections; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscriptions, thread = self._subscriptions, self._thread
        self._stopping.set()
        for subscription in subscriptions:
            subscription.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout + _POLL_SECONDS + 1.0)
            if thread.is_alive():
                logger.warning("the Redis listener did not stop in time")
        self._publisher.close()
        self._listener.close()

    def ping(self) -> None:
        """Raise BrokerUnavailable when Redis does not answer or the listener is not subscribed."""
        try:
            self._publisher.ping()
        except RedisError as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if self._thread is not None and not self._closed and not self._live.is_set():
            raise BrokerUnavailable("Redis answers, but the listener is not subscribed yet (reconnecting)")

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    @property
    def listening(self) -> bool:
        """Whether the listener is subscribed to the channel now."""
        return self._live.is_set()

    def detach(self, subscription: Subscription) -> None:
        """Forget a closed subscription; idempotent."""
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
            self._stale.discard(subscription)

    # -- the listener ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            pubsub = self._listener.pubsub()
            try:
                self._listen(pubsub)
            except Exception as exc:  # noqa: BLE001 - the listener outlives any one failure
                if self._stopping.is_set():
                    break
                if not isinstance(exc, RedisError | OSError):
                    logger.exception("the Redis listener failed; starting over")
                self._went_down(exc)
            finally:
                try:
                    pubsub.close()
                except (RedisError, OSError):
                    pass
            if self._stopping.wait(self._delay * random.uniform(0.5, 1.0)):
                break
            self._delay = min(self._delay * 2, self._backoff[1])
        self._live.clear()

    def _listen(self, pubsub: PubSub) -> None:
        pubsub.subscribe(self.channel)
        subscribed = False
        heard = time.monotonic()
        pinged: float | None = None
        while not self._stopping.is_set():
            message = pubsub.get_message(timeout=_POLL_SECONDS)
            now = time.monotonic()
            if message is None:
                if pinged is not None and now - pinged > self._health_seconds:
                    raise redis.TimeoutError(f"no answer to PING for {self._health_seconds:g}s")
                if pinged is None and now - heard > self._health_seconds:
                    pubsub.ping(_PING)
                    pinged = now
            else:
                heard, pinged = now, None
                kind = message["type"]
                if kind == "message":
                    self._dispatch(message["data"])
                elif kind == "subscribe":
                    # A second confirmation means redis-py reconnected underneath: treat it as a reconnection.
                    self._went_live(resubscribed=subscribed)
                    subscribed = True
            self._send_unsent()

    def _went_live(self, resubscribed: bool) -> None:
        with self._lock:
            if resubscribed:
                self._stale.update(self._subscriptions)
            stale, self._stale = self._stale, set()
            self._live.set()
            down_since, self._down_since = self._down_since, None
        self._delay = self._backoff[0]
        if down_since is not None or resubscribed or stale:
            away = 0.0 if down_since is None else time.monotonic() - down_since
            logger.warning("listening to Redis again (%s) after %.1fs away: closing %d local subscriptions "
                           "(%s); their readers resume from their last event id", self._where, away, len(stale),
                           RECONNECTED)
        else:
            logger.info("listening to Redis channel %r (%s)", self.channel, self._where)
        for subscription in stale:
            subscription.close(RECONNECTED)

    def _went_down(self, exc: BaseException) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._live.clear()
            self._stale.update(self._subscriptions)
        log = logger.warning if first else logger.debug
        log("lost the Redis connection (%s: %s, %s); reconnecting in up to %.1fs", type(exc).__name__, exc,
            self._where, self._delay)

    def _dispatch(self, raw: bytes | str) -> None:
        try:
            event = decode(raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed message on Redis channel %r: %.200r", self.channel, raw)
            return
        for subscription in self._subscriptions:
            try:
                subscription.offer(event)
            except Exception:  # noqa: BLE001 - one reader's broken filter must not stop the others
                logger.exception("a subscription's filter failed on event %s; closing it", event.id)
                subscription.close(EndReason.FILTER_FAILED)

    def _remember_unsent(self, event: Event) -> None:
        with self._lock:
            if self._unsent is None or self._unsent.id < event.id:
                self._unsent = event

    def _send_unsent(self) -> None:
        """Send again the newest event Redis did not take, once the pause after the failure is over."""
        unsent = self._unsent
        if unsent is None or time.monotonic() < self._publish_paused_until:
            return
        try:
            self._publisher.publish(self.channel, encode(unsent))
        except RedisError:
            self._publish_paused_until = time.monotonic() + 1.0
            return
        logger.info("sent event %s to Redis again", unsent.id)
        with self._lock:
            if self._unsent is unsent:
                self._unsent = None


def encode(event: Event) -> str:
    return json.dumps({"id": event.id, "task_id": event.task_id, "user_email": event.user_email,
                       "data": event.data}, separators=(",", ":"), ensure_ascii=False)


def decode(raw: bytes | str) -> Event:
    fields = json.loads(raw)
    event = Event(id=fields["id"], task_id=fields["task_id"], user_email=fields["user_email"], data=fields["data"])
    if not (isinstance(event.id, int) and isinstance(event.task_id, str) and isinstance(event.user_email, str)
            and isinstance(event.data, str)):
        raise TypeError("a field has the wrong type")
    return event


def _describe(client: redis.Redis) -> str:
    """host:port/db of a client, for logs (never the URL, which may hold a password)."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
