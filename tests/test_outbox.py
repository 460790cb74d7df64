"""The notification worker: claim, deliver, retry with backoff, dead letters, leases, stop."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db import Notification, Outbox, Store, utcnow
from notifications import NotificationWorker, RetryPolicy, WorkerState, retry_dead
from support import wait_for
from tasknotify.delivery.channels import Delivery, DeliveryError


class RecordingChannel:
    """A real channel that keeps what it is given and fails as told."""

    name = "log"

    def __init__(self, failures: list[DeliveryError] | None = None, hold: threading.Event | None = None) -> None:
        self.sent: list[Delivery] = []
        self.failures = list(failures or [])
        self.hold = hold
        self.started = threading.Event()

    def send(self, delivery: Delivery) -> None:
        self.started.set()
        if self.hold is not None:
            self.hold.wait(10)
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(delivery)


def add_task(store: Store, task_id: str = "1") -> int:
    _, event, _ = store.change_task(task_id, {"user_email": "a@example.com"}, mode="upsert",
                                    outbox=Outbox(targets=(("log", "log"),)), after_commit=lambda e: None)
    return event.id


def notification(store: Store, notification_id: int = 1) -> Notification:
    with store.read() as session:
        return session.get(Notification, notification_id)


FAST = RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.05)


def make_worker(store, channel, **kwargs) -> NotificationWorker:
    options = {"workers": 2, "policy": FAST, "lease_seconds": 30, "poll_seconds": 0.05, **kwargs}
    return NotificationWorker(store, {"log": channel}, **options)


def test_delivers_and_marks_sent(store):
    channel = RecordingChannel()
    worker = make_worker(store, channel)
    worker.start()
    event_id = add_task(store)
    worker.wake()
    wait_for(lambda: notification(store).status == "sent")
    worker.stop()
    row = notification(store)
    assert row.attempts == 1 and row.sent_at is not None and row.lease_owner is None
    assert [d.event["id"] for d in channel.sent] == [event_id]


def test_temporary_failures_retry_then_succeed(store):
    channel = RecordingChannel([DeliveryError("421 busy"), DeliveryError("451 later")])
    worker = make_worker(store, channel)
    add_task(store)
    worker.start()
    wait_for(lambda: notification(store).status == "sent")
    worker.stop()
    row = notification(store)
    assert row.attempts == 3 and len(channel.sent) == 1 and row.last_error is None


def test_gives_up_after_max_attempts_and_keeps_the_last_error(store):
    channel = RecordingChannel([DeliveryError(f"failure {n}") for n in range(5)])
    worker = make_worker(store, channel)
    add_task(store)
    worker.start()
    wait_for(lambda: notification(store).status == "dead")
    worker.stop()
    row = notification(store)
    assert row.attempts == 3 and row.last_error == "failure 2" and channel.sent == []


def test_permanent_failure_is_dead_at_once_and_can_be_retried(store):
    channel = RecordingChannel([DeliveryError("550 no such user", retryable=False)])
    worker = make_worker(store, channel)
    add_task(store)
    worker.start()
    wait_for(lambda: notification(store).status == "dead")
    assert notification(store).attempts == 1
    assert notification(store).last_error == "permanent: 550 no such user"
    assert retry_dead(store, 1)["status"] == "pending"
    worker.wake()
    wait_for(lambda: notification(store).status == "sent")
    worker.stop()
    with pytest.raises(ValueError):
        retry_dead(store, 1)


def test_backoff_grows_with_jitter_and_a_cap():
    policy = RetryPolicy(max_attempts=10, base_seconds=2, max_seconds=60)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (6, 60), (9, 60)]:
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_expired_lease_makes_a_claimed_row_due_again(store):
    add_task(store)
    crashed = make_worker(store, RecordingChannel(), lease_seconds=30)
    assert [d.notification_id for d in crashed.claim_due(5)] == [1]  # then "dies" without settling
    survivor = make_worker(store, RecordingChannel())
    assert survivor.claim_due(5) == []  # leased: not due
    with store.write() as session:  # the lease runs out
        session.execute(update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    claimed = survivor.claim_due(5)
    assert [d.notification_id for d in claimed] == [1] and claimed[0].attempt == 2
    survivor.deliver(claimed[0])
    assert notification(store).status == "sent"


def test_a_stale_lease_holder_cannot_settle_a_row_taken_over(store):
    add_task(store)
    first = make_worker(store, RecordingChannel())
    [delivery] = first.claim_due(5)
    with store.write() as session:
        session.execute(update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    second = make_worker(store, RecordingChannel([DeliveryError("down")]))
    [again] = second.claim_due(5)
    first.deliver(delivery)  # late success from the first holder is not recorded over the second's lease
    assert notification(store).status == "pending"
    second.deliver(again)
    assert notification(store).status == "retrying"


def test_stop_lets_in_flight_finish_and_releases_unstarted(store):
    hold = threading.Event()
    channel = RecordingChannel(hold=hold)
    for n in range(4):
        add_task(store, str(n))
    worker = make_worker(store, channel, workers=1)
    worker.start()
    assert channel.started.wait(5)
    stopper = threading.Thread(target=worker.stop, args=(10,))
    stopper.start()
    wait_for(lambda: worker.state is WorkerState.STOPPING)
    hold.set()
    stopper.join(10)
    assert worker.state is WorkerState.STOPPED
    with store.read() as session:
        statuses = [n.status for n in session.scalars(select(Notification).order_by(Notification.id))]
        owners = {n.lease_owner for n in session.scalars(select(Notification))}
    assert statuses == ["sent", "pending", "pending", "pending"]
    assert owners == {None}
    assert [n.attempts for n in (notification(store, i) for i in range(2, 5))] == [0, 0, 0]
    worker.stop()  # idempotent
    assert worker.state is WorkerState.STOPPED


def test_lifecycle_is_explicit(store):
    worker = make_worker(store, RecordingChannel(), workers=2)
    assert worker.state is WorkerState.CREATED
    worker.start()
    assert worker.state is WorkerState.RUNNING
    names = {t.name for t in threading.enumerate()}
    assert {"notify-worker-1", "notify-worker-2"} <= names
    with pytest.raises(RuntimeError):
        worker.start()
    worker.stop()
    assert worker.state is WorkerState.STOPPED


def test_a_claim_that_only_holds_rows_does_not_make_the_workers_wait(store):
    """Rows folded into a digest are work done: the workers claim the next ones at once, not after a poll."""
    from tasknotify.delivery import preferences
    from tasknotify.preference_document import Preferences

    preferences.save(store, "a@example.com", Preferences.model_validate(
        {"email": {"enabled": True, "events": ["task.created", "task.updated", "task.deleted"],
                   "digest_seconds": 3600}, "timezone": "UTC", "quiet_hours": None}))
    for n in range(45):
        add_task(store, str(n))
    worker = make_worker(store, RecordingChannel(), workers=1, poll_seconds=30)
    worker.start()
    worker.wake()
    try:
        wait_for(lambda: held(store) == 45, 10, "every row held")
    finally:
        worker.stop()
    with store.read() as session:
        digests = list(session.scalars(select(Notification).where(Notification.kind == "digest")))
    assert len(digests) == 1 and digests[0].status == "pending"


def held(store: Store) -> int:
    with store.read() as session:
        return len(list(session.scalars(select(Notification).where(Notification.status == "held"))))


def every_type(digest_seconds: int = 0, enabled: bool = True):
    from tasknotify.preference_document import Preferences

    return Preferences.model_validate({"email": {"enabled": enabled, "digest_seconds": digest_seconds,
                                                 "events": ["task.created", "task.updated", "task.deleted"]},
                                       "timezone": "UTC", "quiet_hours": None})


def test_email_turned_off_stops_a_retry_and_an_open_digest(store):
    from tasknotify.delivery import preferences

    channel = RecordingChannel([DeliveryError("421 busy")])
    worker = make_worker(store, channel, policy=RetryPolicy(max_attempts=5, base_seconds=30, max_seconds=30))
    add_task(store, "retried")
    [delivery] = worker.claim_due(5)
    worker.deliver(delivery)  # fails: retrying, due in 30 s
    assert notification(store).status == "retrying"
    preferences.save(store, "a@example.com", every_type(digest_seconds=60))
    add_task(store, "held")
    assert worker.claim_due(5) == []  # held in a new digest
    preferences.save(store, "a@example.com", every_type(enabled=False))
    with store.write() as session:  # the retry and the digest come due
        session.execute(update(Notification).where(Notification.status.in_(["retrying", "pending"]))
                        .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert worker.claim_due(5) == []
    with store.read() as session:
        rows = {(n.kind, n.status, n.reason) for n in session.scalars(select(Notification))}
    assert rows == {("event", "suppressed", "email.enabled"), ("event", "digested", "digest"),
                    ("digest", "suppressed", "email.enabled")}
    assert channel.sent == []


def test_stored_preferences_that_no_longer_validate_give_the_defaults(store, caplog):
    from db import PreferencesRow

    with store.write() as session:
        session.add(PreferencesRow(user_email="a@example.com", updated_at=utcnow(),
                                   document='{"email": {"enabled": false}, "timezone": "Gone/Zone"}'))
    add_task(store)
    worker = make_worker(store, RecordingChannel())
    [delivery] = worker.claim_due(5)
    assert delivery.notification_id == 1
    assert "the stored preferences of a@example.com are not valid" in caplog.text
