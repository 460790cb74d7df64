"""The Redis broker against a real Redis: fan-out between brokers, bounded queues, reconnection, close."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from support import ROOT, RedisServer, require_service, wait_for
from tasknotify.events import Event
from tasknotify.live.broker import BrokerUnavailable, Subscription, SubscriptionClosed
from tasknotify.live.redis_broker import RECONNECTED, RedisBroker

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def event(n: int, task_id: str = "t1", user: str = "a@example.com") -> Event:
    return Event(id=n, task_id=task_id, user_email=user, data=f'{{"id":{n},"task_id":"{task_id}"}}')


def receive(subscription: Subscription, count: int, timeout: float = 10.0) -> list[int]:
    """The ids of the next count events of a subscription, failing after timeout."""
    ids: list[int] = []
    deadline = time.monotonic() + timeout
    while len(ids) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out with {ids}"
        got = subscription.get(timeout=left)
        if got is not None:
            ids.append(got.id)
    return ids


def closed_reason(subscription: Subscription, timeout: float = 15.0) -> str:
    """Read until the subscription is closed; return the reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            subscription.get(timeout=0.2)
        except SubscriptionClosed as closed:
            return closed.reason
    raise AssertionError(f"the subscription was not closed within {timeout}s")


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    kwargs = client.connection_pool.connection_kwargs
    client.close()
    require_service(kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379), "Redis")
    return REDIS_URL


@pytest.fixture
def make_broker(redis_url: str) -> Iterator[Callable[..., RedisBroker]]:
    """RedisBrokers on a channel of this test's own (each broker stands for one process); closed at the end."""
    channel = f"test-events-{uuid.uuid4().hex[:12]}"
    made: list[RedisBroker] = []

    def make(url: str = redis_url, **options: Any) -> RedisBroker:
        options.setdefault("client_name", f"test-{uuid.uuid4().hex[:12]}")
        broker = RedisBroker(url, channel=channel, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def kill_listener(url: str, broker: RedisBroker) -> None:
    """CLIENT KILL TYPE pubsub, narrowed to this broker's listener (the Redis may be shared with others)."""
    admin = redis.Redis.from_url(url)
    try:
        name = f"{broker._listener.connection_pool.connection_kwargs['client_name']}"
        ids = [c["id"] for c in admin.client_list(_type="pubsub") if c.get("name") == name]
        assert ids, "the listener's connection is not in CLIENT LIST"
        for client_id in ids:
            assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "ID", client_id) == 1
    finally:
        admin.close()


def test_events_reach_the_subscribers_of_another_broker_in_order(make_broker: Callable[..., RedisBroker]) -> None:
    process_a, process_b = make_broker(), make_broker()
    everything = process_b.subscribe()
    only_t2 = process_b.subscribe(lambda e: e.task_id == "t2")
    own = process_a.subscribe()  # a publisher's own subscribers hear it through Redis too
    assert process_b.subscriber_count == 2

    for n in range(1, 101):
        process_a.publish(event(n, task_id="t2" if n % 3 == 0 else "t1"))

    assert receive(everything, 100) == list(range(1, 101))
    assert receive(only_t2, 33) == list(range(3, 100, 3))
    assert receive(own, 100) == list(range(1, 101))
    assert everything.get(timeout=0.2) is None  # nothing more, no duplicate


def test_an_event_keeps_its_fields_on_the_way(make_broker: Callable[..., RedisBroker]) -> None:
    sender, receiver = make_broker(), make_broker()
    subscription = receiver.subscribe()
    sent = Event(id=7, task_id="t-ü.1", user_email="é@example.com", data='{"id":7,"title":"naïve \\"q\\" \\n"}')
    sender.publish(sent)
    assert subscription.get(timeout=10) == sent


def test_a_malformed_message_is_skipped(make_broker: Callable[..., RedisBroker], redis_url: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    broker = make_broker()
    subscription = broker.subscribe()
    raw = redis.Redis.from_url(redis_url)
    raw.publish(broker.channel, b"not json")
    raw.publish(broker.channel, b'{"id": "x"}')
    raw.close()
    broker.publish(event(1))
    assert receive(subscription, 1) == [1]
    assert "malformed message" in caplog.text


def test_a_slow_subscriber_is_closed_when_its_queue_overflows(make_broker: Callable[..., RedisBroker]) -> None:
    publisher, broker = make_broker(), make_broker(queue_size=5)
    slow = broker.subscribe()
    fast = broker.subscribe()
    for n in range(1, 11):
        publisher.publish(event(n))
        assert receive(fast, 1) == [n]  # the fast reader keeps up; the slow one never reads

    with pytest.raises(SubscriptionClosed) as closed:
        slow.get(timeout=1)
    assert closed.value.reason == "reader fell behind"
    assert broker.subscriber_count == 1
    publisher.publish(event(11))
    assert receive(fast, 1) == [11]  # the others go on


def test_a_dropped_connection_closes_the_subscriptions_and_new_ones_work(
        make_broker: Callable[..., RedisBroker], redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="redis_broker")
    publisher, broker = make_broker(), make_broker()
    first, second = broker.subscribe(), broker.subscribe(lambda e: e.task_id == "t1")
    publisher.publish(event(1))
    assert receive(first, 1) == [1]

    kill_listener(redis_url, broker)

    assert closed_reason(first) == RECONNECTED
    assert closed_reason(second) == RECONNECTED
    assert broker.subscriber_count == 0
    wait_for(lambda: broker.listening, 10, "the listener to be back")
    assert "broker reconnected" in caplog.text and "listening to Redis again" in caplog.text
    again = broker.subscribe()
    publisher.publish(event(2))
    publisher.publish(event(3))
    assert receive(again, 2) == [2, 3]
    broker.ping()


def test_a_publish_redis_did_not_take_is_sent_again(make_broker: Callable[..., RedisBroker],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    publisher, broker = make_broker(), make_broker()
    publisher.start()  # its listener is what sends the event again
    wait_for(lambda: publisher.listening, 10, "the publisher's listener")
    subscription = broker.subscribe()
    real_publish = publisher._publisher.publish
    calls = []

    def failing_once(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise redis.ConnectionError("connection reset by peer")
        return real_publish(*args)

    monkeypatch.setattr(publisher._publisher, "publish", failing_once)
    publisher.publish(event(1))  # does not raise: the event is committed, the caller must go on
    assert receive(subscription, 1, timeout=10) == [1]
    assert len(calls) == 2


def test_close_is_idempotent_and_stops_the_listener(make_broker: Callable[..., RedisBroker]) -> None:
    broker = make_broker()
    subscription = broker.subscribe()
    listener = broker._thread
    assert listener is not None and listener.name == "redis-broker" and listener.is_alive()

    broker.close()
    broker.close()

    assert not listener.is_alive()
    with pytest.raises(SubscriptionClosed):
        subscription.get(timeout=1)
    assert broker.subscriber_count == 0
    late = broker.subscribe()  # a subscription after close is closed at once
    with pytest.raises(SubscriptionClosed):
        late.get(timeout=1)
    broker.publish(event(1))  # ignored, no error


@pytest.mark.serial
def test_an_outage_is_reported_and_survived(make_broker: Callable[..., RedisBroker], redis_server: RedisServer) -> None:
    broker = make_broker(redis_server.url, timeout=1.0, backoff_max_seconds=0.5)
    before = broker.subscribe()
    broker.ping()

    redis_server.stop()
    with pytest.raises(BrokerUnavailable):
        broker.ping()
    started = time.monotonic()
    broker.publish(event(1))  # Redis is down: the caller is not held and nothing is raised
    broker.publish(event(2))
    assert time.monotonic() - started < 2.5
    wait_for(lambda: not broker.listening, 10, "the listener to notice")
    during = broker.subscribe()  # waits at most the timeout, then gives a subscription that may miss events

    redis_server.start()

    assert closed_reason(before) == RECONNECTED
    assert closed_reason(during) == RECONNECTED
    wait_for(lambda: broker.listening, 10, "the listener to be back")
    broker.ping()
    after = broker.subscribe()
    broker.publish(event(3))
    ids = receive(after, 1)
    assert ids[-1] in (2, 3)  # event 2, which Redis did not take, may be sent again first
    if ids == [2]:
        assert receive(after, 1) == [3]


EVENTLET_SCRIPT = """
import eventlet
eventlet.monkey_patch()
import sys, time, uuid
import redis
from tasknotify.events import Event
from tasknotify.live.broker import SubscriptionClosed
from tasknotify.live.redis_broker import RedisBroker, RECONNECTED

url = sys.argv[1]
channel = "eventlet-" + uuid.uuid4().hex
a = RedisBroker(url, channel=channel, client_name="ev-a-" + uuid.uuid4().hex[:8])
b = RedisBroker(url, channel=channel, client_name="ev-b-" + uuid.uuid4().hex[:8])
sub = b.subscribe()
started = time.monotonic()
assert sub.get(timeout=0.5) is None  # an idle wait yields to other green threads
ticks = []
def tick():
    for _ in range(20):
        ticks.append(1)
        eventlet.sleep(0.01)
g = eventlet.spawn(tick)
assert sub.get(timeout=0.5) is None
assert len(ticks) >= 5, ticks  # the other green thread ran while this one waited
g.wait()
for n in range(1, 11):
    a.publish(Event(id=n, task_id="t", user_email="a@example.com", data="{}"))
assert [sub.get(timeout=5).id for _ in range(10)] == list(range(1, 11))
admin = redis.Redis.from_url(url)
name = b._listener.connection_pool.connection_kwargs["client_name"]
for c in admin.client_list(_type="pubsub"):
    if c.get("name") == name:
        admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "ID", c["id"])
try:
    while True:
        sub.get(timeout=10)
except SubscriptionClosed as closed:
    assert closed.reason == RECONNECTED, closed.reason
again = b.subscribe()
a.publish(Event(id=11, task_id="t", user_email="a@example.com", data="{}"))
assert again.get(timeout=5).id == 11
a.close(); b.close(); b.close()
print("OK")
"""


def test_works_under_eventlet_monkey_patching(redis_url: str) -> None:
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", EVENTLET_SCRIPT, redis_url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout + result.stderr


def test_a_quiet_channel_stays_connected_and_a_silent_server_is_left(
        make_broker: Callable[..., RedisBroker], redis_server: RedisServer) -> None:
    broker = make_broker(redis_server.url, timeout=1.0, health_seconds=0.5, backoff_max_seconds=0.3)
    subscription = broker.subscribe()
    assert subscription.get(timeout=2.5) is None  # several PINGs answered: nothing closed
    assert broker.listening and broker.subscriber_count == 1

    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("CLIENT", "PAUSE", "2500", "ALL")  # the server answers nobody for 2.5 s
    admin.close()
    assert closed_reason(subscription) == RECONNECTED
    wait_for(lambda: broker.listening, 10, "the listener to be back")
