"""The outbox worker pool: claim due notifications, deliver them, retry, give up.

Delivery is at least once. Claiming a row takes a lease (its next_attempt_at
moves to the end of the lease and the claimer's token is written on it); a
worker that dies mid-delivery leaves the row to become due again when the
lease runs out, so nothing is lost across a crash, and a receiver may see a
notification twice (the email's Message-ID is the same each time).

A user's email rows meet that user's preferences when they are first claimed
(preferences.decide): sent, suppressed, or held, that is folded into the
user's open digest row, a notification of its own that comes due when its
window closes and is then claimed, leased, retried and sent like any other.
When a digest is claimed its held rows become `digested`: what it covers is
fixed from then on, so every attempt sends the same email.
"""

from __future__ import annotations

import enum
import json
import logging
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from tasknotify.config import load_config
from tasknotify.delivery import preferences
from tasknotify.delivery.channels import Channel, Delivery, DeliveryError, EmailChannel, LogChannel
from tasknotify.delivery.preferences import USER_CHANNELS, Decision, UnsubscribeLinks
from tasknotify.delivery.templates import EmailTemplates
from tasknotify.delivery.webhooks import WebhookChannel
from tasknotify.preference_document import Preferences
from tasknotify.store.store import DriverSQL, Notification, Store, utcnow

logger = logging.getLogger("notifications")

CLAIM_BATCH = 10
# After a wake-up, let more commits land so that one claim takes them together: at 200
# writes a second, 0.1 s rather than 0.02 cut the server's CPU per write by a fifth.
GATHER_SECONDS = 0.1
FLUSH_SECONDS = 1.0  # successes of a batch are recorded together, at least this often
DIGEST_LOCK = 0x64696765  # "dige": with the user's hash, the advisory lock of folding into a digest (PostgreSQL)

Clock = Callable[[], datetime]  # the current UTC time, naive, as utcnow()


class DeliveryObserver(Protocol):
    def delivery(self, channel: str, outcome: str, seconds: float | None) -> None: ...


class WakeUps(Protocol):
    """What tells `flask worker` that other processes committed events (live/broker.py's WakeUps, from factory.py)."""

    def wait(self, timeout: float) -> bool:
        """Whether events came within timeout, or may have passed unseen."""
        ...

    def close(self) -> None: ...


class WorkerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 5.0
    max_seconds: float = 3600.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter: a random wait up to base * 2^(attempt-1), capped."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class OffsetFileClock:
    """UTC now plus the seconds written in a file (NOTIFY_CLOCK_FILE), read at every call; no file means 0.

    For tests and demos: writing 3600 to the file makes the workers act an hour
    later (digest windows close, quiet hours end) without waiting for it.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def __call__(self) -> datetime:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            text = ""
        try:
            offset = float(text or 0)
        except ValueError:
            logger.warning("NOTIFY_CLOCK_FILE %s holds %r, not a number of seconds: taken as 0", self.path, text)
            offset = 0.0
        return utcnow() + timedelta(seconds=offset)


@dataclass
class _Claimed:
    """A row read by claim_due, before its fate is known."""

    id: int
    kind: str
    channel: str
    recipient: str
    attempts: int
    user_email: str
    created_at: datetime
    status: str
    event_type: str | None
    payload: str | None
    preferences: Preferences


class NotificationWorker:
    """A pool of named threads that drain the outbox through the configured channels."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Channel],
        *,
        workers: int = 4,
        policy: RetryPolicy | None = None,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        observer: DeliveryObserver | None = None,
        default_preferences: Preferences | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """default_preferences: those of users who never set any (default: the DEFAULT_* settings' defaults);
        clock: the time the pool goes by (claims, leases, retries, digest windows, quiet hours)."""
        self.store = store
        self.default_preferences = default_preferences or preferences.defaults_from(load_config({}))
        self.clock = clock
        self.observer = observer
        self.channels = dict(channels)
        self.workers = workers
        self.policy = policy or RetryPolicy()
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.state = WorkerState.CREATED
        self._token = uuid.uuid4().hex  # this pool's name on the leases it holds
        # A commit wakes one idle worker, not all of them: at a few writes a second,
        # waking every worker made each run a claim transaction that mostly found nothing.
        self._work = threading.Condition()
        self._work_waiting = False  # set by wake(), cleared by the worker about to claim
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._state_lock = threading.Lock()
        self._next_due: datetime | None = None

    def start(self) -> None:
        with self._state_lock:
            if self.state is not WorkerState.CREATED:
                raise RuntimeError(f"cannot start a worker pool that is {self.state.value}")
            self.state = WorkerState.RUNNING
        for number in range(1, self.workers + 1):
            thread = threading.Thread(target=self._run, name=f"notify-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Tell a worker that work is waiting (called after a commit that wrote outbox rows)."""
        with self._work:
            self._work_waiting = True
            self._work.notify()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop claiming, let in-flight deliveries finish within timeout, release the rest; idempotent."""
        with self._state_lock:
            if self.state in (WorkerState.STOPPING, WorkerState.STOPPED):
                return
            was_running = self.state is WorkerState.RUNNING
            self.state = WorkerState.STOPPING
        self._stopping.set()
        with self._work:
            self._work.notify_all()
        if was_running:
            for thread in self._threads:
                thread.join(timeout)
            stuck = [t.name for t in self._threads if t.is_alive()]
            if stuck:
                logger.warning("still delivering at stop, their leases will expire: %s", ", ".join(stuck))
        self.state = WorkerState.STOPPED

    # -- the loop ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._work:
                self._work_waiting = False
            try:
                batch, claimed = self._claim(CLAIM_BATCH)
            except (SQLAlchemyError, self.store.engine.dialect.dbapi.Error):
                logger.exception("claiming notifications failed")
                self._stopping.wait(self.poll_seconds)
                continue
            if batch:
                self._deliver_batch(batch)
                continue
            if claimed:
                continue  # every row claimed was held or suppressed: more may be due
            with self._work:
                woken = self._work_waiting or self._work.wait(self._idle_timeout())
            if woken:
                self._stopping.wait(GATHER_SECONDS)

    def _idle_timeout(self) -> float:
        """Wait until the next retry this pool scheduled is due, or at most the poll interval."""
        next_due, now = self._next_due, self.clock()
        if next_due is None:
            return self.poll_seconds
        if next_due <= now:
            self._next_due = None  # due now: claim once more, then back to polling
            return 0.0
        return min(self.poll_seconds, (next_due - now).total_seconds())

    def _deliver_batch(self, batch: list[Delivery]) -> None:
        # One UPDATE records the batch's successes: a crash before it means those are
        # sent again (at least once, as after any crash), never lost.
        sent: list[Delivery] = []
        first_unrecorded = 0.0
        for index, delivery in enumerate(batch):
            if self._stopping.is_set():
                self._record_sent(sent)
                self.release([d.notification_id for d in batch[index:]])
                return
            if self._attempt(delivery):
                if not sent:
                    first_unrecorded = time.monotonic()
                sent.append(delivery)
            if sent and time.monotonic() - first_unrecorded >= FLUSH_SECONDS:
                self._record_sent(sent)
                sent = []
        self._record_sent(sent)

    def deliver(self, delivery: Delivery) -> None:
        """Send one claimed notification and record the outcome."""
        if self._attempt(delivery):
            self._record_sent([delivery])

    def _attempt(self, delivery: Delivery) -> bool:
        """Send one claimed notification: True when sent, else its failure is recorded."""
        channel = self.channels.get(delivery.channel)
        try:
            if channel is None:
                raise DeliveryError(f"channel {delivery.channel!r} is not configured here", retryable=True)
            channel.send(delivery)
        except DeliveryError as exc:
            logger.warning(
                "notification %s via %s failed (attempt %s): %s",
                delivery.notification_id, delivery.channel, delivery.attempt, exc,
            )
            self._record_failure(delivery, str(exc), retryable=exc.retryable)
        except Exception as exc:  # a bug in a channel must not kill the worker or lose the row
            logger.exception("notification %s via %s crashed", delivery.notification_id, delivery.channel)
            self._record_failure(delivery, f"{type(exc).__name__}: {exc}", retryable=True)
        else:
            return True
        return False

    # -- the outbox table ----------------------------------------------------------

    def claim_due(self, limit: int) -> list[Delivery]:
        """Lease up to limit due notifications to this pool, oldest due first.

        Email rows claimed for the first time meet their user's preferences here:
        those suppressed or held are settled in the same transaction and not returned.
        """
        return self._claim(limit)[0]

    def _claim(self, limit: int) -> tuple[list[Delivery], int]:
        """claim_due(), and how many due rows it took (delivered, held or suppressed)."""
        now = self.clock()
        outcomes: list[tuple[str, str]] = []
        with self.store.driver_write() as sql:
            # Plain SQL: workers claim at every wake-up, and SQLAlchemy's statements cost more than the claim.
            skip_locked = " FOR UPDATE SKIP LOCKED" if sql.dialect.name == "postgresql" else ""
            ids = [row[0] for row in sql.rows(
                "SELECT id FROM notifications WHERE status IN ('pending', 'retrying') AND next_attempt_at <= :now "
                f"ORDER BY next_attempt_at, id LIMIT :limit{skip_locked}", {"now": now, "limit": limit})]
            if not ids:
                return [], 0
            claimed = self._read_claimed(sql, ids)
            deliver: list[_Claimed] = []
            for row in claimed:
                decision = self._decision(row, now)
                if decision.action == "send":
                    deliver.append(row)
                elif decision.action == "suppress":
                    self._suppress(sql, row, decision.reason or "")
                    outcomes.append((row.channel, "suppressed"))
                else:
                    self._fold(sql, row, decision, now)
                    outcomes.append((row.channel, "held"))
            deliveries = self._lease(sql, deliver, now)
        if self.observer is not None:
            for channel, outcome in outcomes:
                self.observer.delivery(channel, outcome, None)
        return deliveries, len(ids)

    def _read_claimed(self, sql: DriverSQL, ids: list[int]) -> list[_Claimed]:
        placeholders, params = sql.in_list("id", ids)
        rows = sql.rows(
            "SELECT n.id, n.kind, n.channel, n.recipient, n.attempts, n.user_email, n.created_at, n.status, e.type, "
            "e.payload, p.document FROM notifications n LEFT JOIN events e ON e.id = n.event_id "
            f"LEFT JOIN preferences p ON p.user_email = n.user_email WHERE n.id IN {placeholders} ORDER BY n.id",
            params)
        return [_Claimed(id=r[0], kind=r[1], channel=r[2], recipient=r[3], attempts=r[4], user_email=r[5],
                         created_at=sql.read_datetime(r[6]), status=r[7], event_type=r[8], payload=r[9],
                         preferences=self._preferences(r[5], r[10]))
                for r in rows]

    def _preferences(self, user_email: str, document: str | None) -> Preferences:
        if document is None:
            return self.default_preferences
        try:
            return preferences.decode(document)
        except ValueError:  # changed by hand in the database, or a time zone this machine no longer knows
            logger.error("the stored preferences of %s are not valid: the defaults apply", user_email, exc_info=True)
            return self.default_preferences

    def _decision(self, row: _Claimed, now: datetime) -> Decision:
        """Send, suppress or hold a user's email rows (webhooks are always sent).

        Email turned off stops every row not yet sent (a retry, a digest); the rest of the
        preferences apply once, when an event's email is first claimed.
        """
        if row.channel not in USER_CHANNELS:
            return preferences.SEND
        if not row.preferences.email.enabled:
            return Decision("suppress", "email.enabled")
        if row.kind == "digest" or row.attempts != 0 or row.status != "pending":
            return preferences.SEND
        return preferences.decide(row.preferences, row.event_type or "", row.created_at, now)

    def _suppress(self, sql: DriverSQL, row: _Claimed, reason: str) -> None:
        sql.execute("UPDATE notifications SET status = 'suppressed', reason = :reason WHERE id = :id",
                    {"reason": reason, "id": row.id})
        if row.kind == "digest":
            sql.execute("UPDATE notifications SET status = 'digested' WHERE digest_id = :id AND status = 'held'",
                        {"id": row.id})

    def _fold(self, sql: DriverSQL, row: _Claimed, decision: Decision, now: datetime) -> None:
        """Hold row in its user's open digest whose window its event falls in, or in a new one."""
        postgres = sql.dialect.name == "postgresql"
        if postgres:
            # Two processes must not both open a digest for one user; SQLite writes one at a time anyway.
            sql.execute("SELECT pg_advisory_xact_lock(:space, hashtext(:user))",
                        {"space": DIGEST_LOCK, "user": row.user_email})
        # A digest being claimed elsewhere is closing: SKIP LOCKED leaves it to that claim.
        found = sql.rows(
            "SELECT id, next_attempt_at FROM notifications WHERE user_email = :user AND kind = 'digest' "
            "AND status = 'pending' AND channel = :channel AND attempts = 0 AND lease_owner IS NULL "
            "AND next_attempt_at > :event_time ORDER BY id LIMIT 1" + (" FOR UPDATE SKIP LOCKED" if postgres else ""),
            {"user": row.user_email, "channel": row.channel, "event_time": row.created_at})
        if found:
            digest_id, release = found[0][0], sql.read_datetime(found[0][1])
        else:
            release = decision.release or now
            [(digest_id,)] = sql.rows(
                "INSERT INTO notifications (event_id, task_id, user_email, channel, recipient, status, attempts, "
                "next_attempt_at, created_at, kind, reason) VALUES (NULL, NULL, :user, :channel, :recipient, "
                "'pending', 0, :release, :now, 'digest', :reason) RETURNING id",
                {"user": row.user_email, "channel": row.channel, "recipient": row.recipient, "release": release,
                 "now": now, "reason": decision.reason})
        sql.execute("UPDATE notifications SET status = 'held', reason = :reason, digest_id = :digest_id, "
                    "next_attempt_at = :release WHERE id = :id",
                    {"reason": decision.reason, "digest_id": digest_id, "release": release, "id": row.id})

    def _lease(self, sql: DriverSQL, rows: list[_Claimed], now: datetime) -> list[Delivery]:
        """Lease rows to this pool; a digest's held rows become digested and its events are read."""
        if not rows:
            return []
        placeholders, params = sql.in_list("id", [row.id for row in rows])
        sql.execute(f"UPDATE notifications SET next_attempt_at = :until, lease_owner = :owner, "
                    f"attempts = attempts + 1 WHERE id IN {placeholders}",
                    {**params, "until": now + self.lease, "owner": self._token})
        covered: dict[int, list[dict[str, Any]]] = {}
        digests = [row.id for row in rows if row.kind == "digest"]
        if digests:
            marks, ids = sql.in_list("digest", digests)
            sql.execute(f"UPDATE notifications SET status = 'digested' WHERE digest_id IN {marks} "
                        "AND status = 'held'", ids)
            for digest_id, payload in sql.rows(
                    "SELECT n.digest_id, e.payload FROM notifications n JOIN events e ON e.id = n.event_id "
                    f"WHERE n.digest_id IN {marks} ORDER BY n.event_id", ids):
                covered.setdefault(digest_id, []).append(json.loads(payload))
        return [
            Delivery(notification_id=row.id, channel=row.channel, recipient=row.recipient, attempt=row.attempts + 1,
                     event=None if row.payload is None else json.loads(row.payload),
                     digest=tuple(covered.get(row.id, ())) if row.kind == "digest" else None)
            for row in rows
        ]

    def release(self, ids: list[int]) -> None:
        """Give back claimed rows that were never attempted, due at once."""
        if not ids:
            return
        with self.store.write() as session:
            session.execute(
                update(Notification)
                .where(Notification.id.in_(ids), Notification.lease_owner == self._token)
                .values(next_attempt_at=self.clock(), lease_owner=None, attempts=Notification.attempts - 1)
            )

    def _record_sent(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        now = self.clock()
        self._finish(deliveries, status="sent", sent_at=now, last_error=None)
        if self.observer is not None:
            for delivery in deliveries:
                seconds = None  # a digest is late on purpose: it does not count in the delivery time
                if delivery.event is not None:
                    occurred = datetime.fromisoformat(delivery.event["occurred_at"].rstrip("Z"))
                    seconds = (now - occurred).total_seconds()
                self.observer.delivery(delivery.channel, "sent", seconds)

    def _record_failure(self, delivery: Delivery, error: str, *, retryable: bool) -> None:
        """Schedule the next attempt, or mark the row dead: at once when no attempt can succeed, else at the last."""
        if not retryable:
            error = f"permanent: {error}"
        if not retryable or delivery.attempt >= self.policy.max_attempts:
            self._finish([delivery], status="dead", last_error=error)
            if self.observer is not None:
                self.observer.delivery(delivery.channel, "dead", None)
            logger.error("notification %s is dead after %s attempts: %s",
                         delivery.notification_id, delivery.attempt, error)
            return
        due = self.clock() + timedelta(seconds=self.policy.delay(delivery.attempt))
        self._finish([delivery], status="retrying", next_attempt_at=due, last_error=error)
        if self.observer is not None:
            self.observer.delivery(delivery.channel, "retry", None)
        if self._next_due is None or due < self._next_due:
            self._next_due = due

    def _finish(self, deliveries: list[Delivery], **values: Any) -> None:
        # Only the lease holder may settle a row: if our lease ran out and another
        # worker took the row, its outcome is the one that counts.
        with self.store.driver_write() as sql:
            placeholders, params = sql.in_list("id", [d.notification_id for d in deliveries])
            changes = ", ".join(f"{name} = :{name}" for name in sorted(values))
            sql.execute(f"UPDATE notifications SET lease_owner = NULL, {changes} "
                        f"WHERE id IN {placeholders} AND lease_owner = :owner",
                        {**params, **values, "owner": self._token})


def retry_dead(store: Store, notification_id: int) -> dict[str, Any] | None:
    """Make a dead notification due again with a fresh attempt count; None if there is no such row.

    Raises ValueError when the notification is not dead.
    """
    with store.write() as session:
        row = session.get(Notification, notification_id)
        if row is None:
            return None
        if row.status != "dead":
            raise ValueError(f"notification {notification_id} is {row.status}, only dead ones are retried")
        row.status = "pending"
        row.attempts = 0
        row.next_attempt_at = utcnow()
        row.lease_owner = None
        session.flush()
        return row.to_dict()


def get_notification(store: Store, notification_id: int) -> dict[str, Any] | None:
    with store.read() as session:
        row = session.get(Notification, notification_id)
        if row is None:
            return None
        return row.to_dict(_covered(session, [row]).get(row.id))


def list_notifications(
    store: Store, *, task_id: str | None, status: str | None, user_email: str | None, limit: int, after_row: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of notifications, newest last, and the id to continue after (None at the end)."""
    query = select(Notification).where(Notification.id > after_row).order_by(Notification.id).limit(limit + 1)
    if task_id is not None:
        query = query.where(Notification.task_id == task_id)
    if status is not None:
        query = query.where(Notification.status == status)
    if user_email is not None:
        query = query.where(Notification.user_email == user_email)
    with store.read() as session:
        rows = list(session.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        covered = _covered(session, rows)
    return [row.to_dict(covered.get(row.id)) for row in rows], (rows[-1].id if more else None)


def _covered(session: Any, rows: list[Notification]) -> dict[int, list[int]]:
    """The event ids each digest among rows covers, oldest first (one query)."""
    digests = [row.id for row in rows if row.kind == "digest"]
    covered: dict[int, list[int]] = {digest_id: [] for digest_id in digests}
    if digests:
        query = (select(Notification.digest_id, Notification.event_id)
                 .where(Notification.digest_id.in_(digests)).order_by(Notification.event_id))
        for digest_id, event_id in session.execute(query):
            covered[digest_id].append(event_id)
    return covered


def build_channels(config: Mapping[str, Any], links: UnsubscribeLinks,
                   templates: EmailTemplates) -> dict[str, Channel]:
    """The configured channels: email when SMTP_HOST is set (log otherwise), and webhook with WEBHOOK_URL."""
    channels: dict[str, Channel] = {}
    if config.get("SMTP_HOST"):
        channels["email"] = EmailChannel(config, links, templates)
    else:
        channels["log"] = LogChannel()
    if config.get("WEBHOOK_URL"):
        channels["webhook"] = WebhookChannel(config)
    return channels


def outbox_targets(channels: Mapping[str, Channel], config: Mapping[str, Any]) -> tuple[tuple[str, str | None], ...]:
    """(channel, recipient) for each configured channel; None stands for the task's user_email."""
    recipients = {"email": None, "log": "log", "webhook": config.get("WEBHOOK_URL")}
    return tuple((name, recipients.get(name)) for name in channels)


def init_app(app: Flask, store: Store, observer: DeliveryObserver | None = None,
             wake_ups: WakeUps | None = None) -> NotificationWorker:
    """Build the app's channels and worker pool; the pool starts only when asked (see app.py).

    wake_ups: what tells `flask worker` of events other processes commit (a shared broker's; factory.py).
    """
    config = app.config
    if wake_ups is not None:
        app.extensions["wake_ups"] = wake_ups
    links = UnsubscribeLinks(config["SECRET_KEY"], preferences.public_url(config))
    templates = EmailTemplates(config.get("EMAIL_TEMPLATES_DIR"))
    templates.check()  # a broken template stops the start, rather than every email it would render
    app.extensions["unsubscribe"] = links
    app.extensions["default_preferences"] = defaults = preferences.defaults_from(config)
    channels = build_channels(config, links, templates)
    worker = NotificationWorker(
        store,
        channels,
        workers=config["NOTIFY_WORKERS"],
        policy=RetryPolicy(
            max_attempts=config["NOTIFY_MAX_ATTEMPTS"],
            base_seconds=config["NOTIFY_BACKOFF_SECONDS"],
            max_seconds=config["NOTIFY_BACKOFF_MAX_SECONDS"],
        ),
        lease_seconds=config["NOTIFY_LEASE_SECONDS"],
        poll_seconds=config["NOTIFY_POLL_SECONDS"],
        observer=observer,
        default_preferences=defaults,
        clock=OffsetFileClock(config["NOTIFY_CLOCK_FILE"]) if config.get("NOTIFY_CLOCK_FILE") else utcnow,
    )
    app.extensions["notifications"] = worker
    return worker


@click.command("worker")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Worker threads (default NOTIFY_WORKERS).")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None, envvar="WORKER_METRICS_PORT",
              help="Serve this process's Prometheus metrics on http://HOST:PORT/metrics (default: not served).")
@click.option("--metrics-host", default="127.0.0.1", envvar="WORKER_METRICS_HOST", show_default=True,
              help="Address the metrics are served on.")
@with_appcontext
def worker_command(concurrency: int | None, metrics_port: int | None, metrics_host: str) -> None:
    """Run only the notification workers, until SIGTERM or SIGINT."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    worker: NotificationWorker = app.extensions["notifications"]
    worker.workers = concurrency or max(1, worker.workers)
    metrics_server = None
    if metrics_port is not None:
        metrics_server = app.extensions["metrics"].serve(metrics_port, metrics_host)
        click.echo(f"metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker.start()
    waker = _wake_on_events(app, worker, stop)
    click.echo(f"notification workers running: {worker.workers} threads, channels {', '.join(worker.channels)}",
               err=True)
    while not stop.wait(1.0):
        pass
    click.echo("stopping: finishing deliveries in flight", err=True)
    worker.stop(app.config["NOTIFY_STOP_GRACE_SECONDS"])
    if waker is not None:
        waker.join(2)
    if metrics_server is not None:
        metrics_server.shutdown()


def _wake_on_events(app: Flask, worker: NotificationWorker, stop: threading.Event) -> threading.Thread | None:
    """With a shared broker, wake this process's workers on every event another process commits."""
    wake_ups: WakeUps | None = app.extensions.get("wake_ups")
    if wake_ups is None:
        return None  # no shared broker: the workers' poll (NOTIFY_POLL_SECONDS) finds new rows

    def relay() -> None:
        while not stop.is_set():
            if wake_ups.wait(1.0):
                worker.wake()  # an event, or events that may have passed unseen: look at the outbox now
        wake_ups.close()

    thread = threading.Thread(target=relay, name="notify-waker", daemon=True)
    thread.start()
    return thread
