"""The in-process broker: per-user fan-out, bounded queues, closing."""

from __future__ import annotations

import threading

import pytest

from tasknotify.events import Event
from tasknotify.live.broker import EndReason, InMemoryBroker, SubscriptionClosed, WakeUps


def event(n: int, user: str = "a@example.com", task: str = "t") -> Event:
    return Event(id=n, task_id=task, user_email=user, data=f'{{"id":{n}}}')


def test_each_subscription_gets_what_it_may_see():
    broker = InMemoryBroker()
    everything = broker.subscribe()
    alice = broker.subscribe(user_email="a@example.com")
    bob_task = broker.subscribe(lambda e: e.task_id == "x", user_email="b@example.com")
    for n, (user, task) in enumerate([("a@example.com", "t"), ("b@example.com", "t"), ("b@example.com", "x")], 1):
        broker.publish(event(n, user, task))
    assert [everything.get(0).id for _ in range(3)] == [1, 2, 3]
    assert alice.get(0).id == 1 and alice.get(0) is None
    assert bob_task.get(0).id == 3 and bob_task.get(0) is None
    assert broker.subscriber_count == 3
    alice.close()
    assert broker.subscriber_count == 2
    broker.publish(event(4))
    with pytest.raises(SubscriptionClosed):
        alice.get(0)


def test_a_subscription_closed_with_a_reason_tells_its_reader_why_once():
    broker = InMemoryBroker()
    subscription = broker.subscribe()
    waiting = []
    reader = threading.Thread(target=lambda: waiting.append(_reason(subscription, timeout=10)))
    reader.start()
    subscription.close(EndReason.SERVER_CLOSED)
    subscription.close(EndReason.FELL_BEHIND)  # the first reason stays
    reader.join(10)
    assert waiting == [EndReason.SERVER_CLOSED] and _reason(subscription) is EndReason.SERVER_CLOSED
    assert str(EndReason.SERVER_CLOSED) == "closed by the server"  # as the logs say it
    assert broker.subscriber_count == 0


def _reason(subscription, timeout: float = 0) -> EndReason | None:
    try:
        subscription.get(timeout)
    except SubscriptionClosed as closed:
        return closed.reason
    return None


def test_a_reader_that_falls_behind_is_closed_and_never_blocks_the_publisher():
    broker = InMemoryBroker(queue_size=3)
    slow = broker.subscribe()
    fast = broker.subscribe()
    for n in range(1, 6):
        broker.publish(event(n))
        assert fast.get(0).id == n
    with pytest.raises(SubscriptionClosed) as closed:
        slow.get(0)
    assert closed.value.reason == "reader fell behind"
    assert broker.subscriber_count == 1


def test_close_wakes_a_waiting_reader():
    broker = InMemoryBroker()
    subscription = broker.subscribe()
    outcome: list[str] = []

    def read() -> None:
        try:
            subscription.get(timeout=10)
        except SubscriptionClosed as exc:
            outcome.append(exc.reason)

    reader = threading.Thread(target=read)
    reader.start()
    broker.close()
    reader.join(5)
    assert outcome == ["closed"]
    broker.close()  # idempotent


def test_wake_ups_come_with_each_event_and_after_a_subscription_is_cut():
    """What wakes `flask worker`: an event, or a subscription cut (events may have passed unseen), then events again."""
    broker = InMemoryBroker(queue_size=2)
    wake_ups = WakeUps(broker)
    assert wake_ups.wait(0) is False and broker.subscriber_count == 1  # subscribed at the first wait
    broker.publish(event(1))
    assert wake_ups.wait(0) is True and wake_ups.wait(0) is False
    for n in range(2, 6):
        broker.publish(event(n))  # more than its queue holds: the subscription is cut
    assert wake_ups.wait(0) is True  # told once, and subscribed again
    broker.publish(event(6))
    assert wake_ups.wait(0) is True and wake_ups.wait(0) is False
    wake_ups.close()
    assert broker.subscriber_count == 0


def test_the_sse_frame_is_encoded_once():
    e = event(7)
    assert e.sse_frame == b'id: 7\ndata: {"id":7}\n\n'
    assert e.sse_frame is e.sse_frame


def test_every_broker_has_what_the_protocol_declares():
    """/readyz calls ping() on whatever broker the app has: the Protocol says so, and every broker has it."""
    from tasknotify.live.broker import Broker, RelayedBroker
    from tasknotify.live.redis_broker import RedisBroker

    declared = {name for name in vars(Broker) if not name.startswith("_")}
    assert "ping" in declared
    for implementation in (InMemoryBroker, RelayedBroker):
        assert declared <= set(dir(implementation)), implementation
    assert {"publish", "subscribe", "ping", "close"} <= set(dir(RedisBroker))
    InMemoryBroker(10).ping()  # up while the process is
