"""The store: SQLAlchemy 2 models and the short transactions that change them.

A change to a task writes the task row, one row in the append-only `events`
log and one outbox row per notification channel in a single transaction:
either all three are there or none. Event ids only grow; they are the ids of
every stream.

On PostgreSQL, transactions that append events take one advisory lock, so
events commit in id order across processes: a reader that has seen event N
has seen every event before it. The writes that queue while one commits
share the next transaction (group_commit.py).

On SQLite (the embedded default) writes are serialized in the process by a
lock and begin with BEGIN IMMEDIATE: SQLite's busy wait is C code that never
yields to other green threads, so two writers of one eventlet process must
never wait on each other inside SQLite. Transactions hold no I/O but the
database's own.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tasknotify.config import SQLITE_SYNCHRONOUS_LEVELS
from tasknotify.events import Event, sse_frames
from tasknotify.ids import MAX_ID
from tasknotify.store.checkpoints import Checkpointer
from tasknotify.store.group_commit import GroupCommit


def utcnow() -> datetime:
    """The current UTC time, naive, as stored in every table."""
    return datetime.now(UTC).replace(tzinfo=None)


def isoformat(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds") + "Z"


class Base(DeclarativeBase):
    pass


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    user_email: Mapped[str] = mapped_column(String(320), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    def to_dict(self) -> dict[str, Any]:
        return task_to_dict({name: getattr(self, name) for name in TASK_FIELDS})


TASK_FIELDS = ("task_id", "user_email", "title", "description", "status", "created_at", "updated_at")


def task_to_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A task as the API and the events show it, from a row or its values."""
    return {
        "task_id": row["task_id"],
        "user_email": row["user_email"],
        "title": row["title"],
        "description": row["description"],
        "status": row["status"],
        "created_at": isoformat(row["created_at"]),
        "updated_at": isoformat(row["updated_at"]),
    }


class EventRow(Base):
    __tablename__ = "events"
    # AUTOINCREMENT: SQLite never reuses an id, so event ids only grow.
    __table_args__ = (Index("ix_events_task_id_id", "task_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[str] = mapped_column(String(64))
    user_email: Mapped[str] = mapped_column(String(320), index=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime)
    # The wire payload, JSON-encoded once when the event is written.
    payload: Mapped[str] = mapped_column(Text)


class Notification(Base):
    """One delivery through one channel: the outbox row.

    kind "event": the email (or webhook, log line) of one event. kind "digest":
    one email that folds a user's held event emails together; its event_id and
    task_id are null, and the rows it covers point to it with digest_id.
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt_at"),
                      # a user's rows, and the open digest of a user (delivery/preferences.py)
                      Index("ix_notifications_user_kind_status", "user_email", "kind", "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"), index=True)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    user_email: Mapped[str] = mapped_column(String(320))
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    kind: Mapped[str] = mapped_column(String(16), default="event", server_default="event")
    # suppressed: the preference that stopped it; held: what it waits for (digest, quiet_hours)
    reason: Mapped[str | None] = mapped_column(String(32), default=None)
    digest_id: Mapped[int | None] = mapped_column(ForeignKey("notifications.id"), index=True, default=None)

    def to_dict(self, event_ids: list[int] | None = None) -> dict[str, Any]:
        """The row as the API shows it; event_ids: the events a digest covers."""
        return {
            "id": self.id,
            "kind": self.kind,
            "event_id": self.event_id,
            "task_id": self.task_id,
            "user_email": self.user_email,
            "channel": self.channel,
            "recipient": self.recipient,
            "status": self.status,
            "reason": self.reason,
            "digest_id": self.digest_id,
            "event_ids": event_ids if self.kind == "digest" else None,
            "attempts": self.attempts,
            "next_attempt_at": isoformat(self.next_attempt_at) if self.status in DUE_STATUSES else None,
            "last_error": self.last_error,
            "created_at": isoformat(self.created_at),
            "sent_at": isoformat(self.sent_at),
        }


# Statuses whose next_attempt_at says when something happens next (held: when its digest may go out).
DUE_STATUSES = ("pending", "retrying", "held")


class PreferencesRow(Base):
    """A user's notification preferences (delivery/preferences.py); a user without a row has the defaults."""

    __tablename__ = "preferences"

    user_email: Mapped[str] = mapped_column(String(320), primary_key=True)
    document: Mapped[str] = mapped_column(Text)  # the JSON document of GET /preferences
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class IdempotencyKey(Base):
    """A write made with an Idempotency-Key header: what it produced, so a retry gets the same answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(320))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    created: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)


IDEMPOTENCY_TTL = timedelta(hours=24)
EVENT_LOG_LOCK = 0x7461736B  # "task": the advisory lock key of event-writing transactions


@dataclass(frozen=True)
class Idempotency:
    """The Idempotency-Key of a write: whose it is, the key, and a hash of the request it came with."""

    owner: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class PriorWrite:
    """A write already made with the same key: the event it recorded and whether it created the task."""

    fingerprint: str
    event: dict[str, Any]
    created: bool


class TaskNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Outbox:
    """Where the notifications of an event go: (channel, recipient) pairs; None means the task's email."""

    targets: tuple[tuple[str, str | None], ...]


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(str(row_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Turn an opaque cursor back into a row id; ValueError when it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = int(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc
    if not 0 <= value <= MAX_ID:
        raise ValueError("invalid cursor")
    return value


class Store:
    """The database of one app: its engine, short read and write sessions, and task changes."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "NORMAL") -> None:
        """sqlite_synchronous: NORMAL (a commit does not wait for the disk) or FULL (it does)."""
        url = normalize_url(url)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _create_engine(url, sqlite_synchronous)
        self._write_lock = threading.Lock()
        self._group: GroupCommit[DriverSQL] = GroupCommit(self._write_lock, self._driver_transaction,
                                                          tolerated=(TaskNotFound,),
                                                          max_group=1 if self.is_sqlite else 100)
        self._checkpointer: Checkpointer | None = None

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    def start(self) -> None:
        """The server's upkeep: on SQLite, checkpoints in an OS thread rather than inside a request's commit."""
        in_memory = self.engine.url.database in (None, "", ":memory:")
        if self.is_sqlite and not in_memory and self._checkpointer is None:
            self._checkpointer = Checkpointer(self.engine, self._write_lock)
            self._checkpointer.start()

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; its objects stay usable after it closes."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on exit; serialized in this process."""
        with self._write_lock, self.write_unlocked() as session:
            yield session

    # -- task changes -------------------------------------------------------

    def change_task(
        self,
        task_id: str,
        fields: dict[str, Any],
        *,
        mode: str,
        outbox: Outbox,
        after_commit: Callable[[Event], None],
        owner: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> tuple[dict[str, Any], Event, bool]:
        """Apply a change and record its event and notifications; return (task, event, created).

        mode: "upsert" creates the task or changes the given fields, "replace"
        sets every field (creating the task if new), "patch" changes the given
        fields of an existing task (TaskNotFound otherwise).
        owner, when given, must own an existing task (TaskNotFound otherwise).
        idempotency records the key with the event in the same transaction; a
        second write with the same key fails on its unique constraint.
        after_commit runs once the transaction is committed, before the next
        write begins, so events reach it in id order. Writes that arrive while
        another commits share the next transaction (group_commit.py).
        """
        def apply(sql: DriverSQL) -> tuple[tuple[dict[str, Any], Event, bool], Event]:
            row = sql.task(task_id)
            created = row is None
            if (created and mode == "patch") or (row is not None and owner not in (None, row["user_email"])):
                raise TaskNotFound(task_id)
            now = utcnow()
            if row is None:
                values = {"task_id": task_id, "title": "", "description": "", "status": "open",
                          "created_at": now, **fields, "updated_at": now}
                sql.insert_task(values)
            else:
                values = {**row, **fields, "updated_at": now}
                sql.update_task(row["id"], {**fields, "updated_at": now})
            task_dict = task_to_dict(values)
            event_ = sql.record_event("task.created" if created else "task.updated", task_dict, now, outbox)
            if idempotency is not None:
                sql.record_key(idempotency, event_.id, created, now)
            return (task_dict, event_, created), event_

        return self._group.run(apply, after_commit)

    def delete_task(self, task_id: str, *, outbox: Outbox, after_commit: Callable[[Event], None],
                    owner: str | None = None) -> Event:
        """Delete a task and record a task.deleted event carrying its last state."""

        def apply(sql: DriverSQL) -> tuple[Event, Event]:
            row = sql.task(task_id)
            if row is None or owner not in (None, row["user_email"]):
                raise TaskNotFound(task_id)
            sql.delete_task(row["id"])
            event_ = sql.record_event("task.deleted", task_to_dict(row), utcnow(), outbox)
            return event_, event_

        return self._group.run(apply, after_commit)

    @contextmanager
    def driver_write(self) -> Iterator[DriverSQL]:
        """A write transaction in plain SQL, committed on exit; serialized in this process."""
        with self._write_lock, self._driver_transaction(lock_event_log=False) as sql:
            yield sql

    @contextmanager
    def _driver_transaction(self, lock_event_log: bool = True) -> Iterator[DriverSQL]:
        """A write transaction (the caller holds the write lock) whose statements go straight to the driver.

        The writes of every POST run here: plain SQL on a pooled DBAPI connection
        costs a fraction of SQLAlchemy's connection, transaction and statement
        machinery (a third of a write's database time).
        """
        dbapi = self.engine.dialect.dbapi
        try:
            with self._driver_sql() as (connection, sql):
                try:
                    if self.is_sqlite:
                        sql.cursor.execute("BEGIN IMMEDIATE")  # the driver is in autocommit mode (see _create_engine)
                    if lock_event_log and not self.is_sqlite:
                        # Without it, two processes could commit events 11 then 10, and a reader
                        # that saw 11 would never see 10. SQLite's write lock already orders them.
                        sql.execute("SELECT pg_advisory_xact_lock(:key)", {"key": EVENT_LOG_LOCK})
                    yield sql
                    connection.commit()
                except BaseException:
                    connection.rollback()
                    raise
        except dbapi.IntegrityError as exc:
            raise IntegrityError(None, None, exc) from exc

    @contextmanager
    def write_unlocked(self) -> Iterator[Session]:
        """A write transaction for a caller that already holds the write lock."""
        bind = self.engine.execution_options(sqlite_begin="IMMEDIATE") if self.is_sqlite else self.engine
        with Session(bind, expire_on_commit=False) as session, session.begin():
            yield session

    def prior_write(self, owner: str, key: str) -> PriorWrite | None:
        """The unexpired write made by owner with this Idempotency-Key, if any."""
        query = (
            select(IdempotencyKey.fingerprint, IdempotencyKey.created, EventRow.payload)
            .join(EventRow, EventRow.id == IdempotencyKey.event_id)
            .where(IdempotencyKey.owner == owner, IdempotencyKey.key == key,
                   IdempotencyKey.created_at > utcnow() - IDEMPOTENCY_TTL)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else PriorWrite(fingerprint=row[0], created=row[1], event=json.loads(row[2]))

    # -- reads ---------------------------------------------------------------

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self.read() as session:
            task = session.scalar(select(Task).where(Task.task_id == task_id))
            return None if task is None else task.to_dict()

    def list_tasks(
        self, *, user_email: str | None, status: str | None, limit: int, after_row: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of tasks in creation order, and the cursor of the next page (None at the end)."""
        query = select(Task).where(Task.id > after_row).order_by(Task.id).limit(limit + 1)
        if user_email is not None:
            query = query.where(Task.user_email == user_email)
        if status is not None:
            query = query.where(Task.status == status)
        with self.read() as session:
            rows = list(session.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = encode_cursor(rows[-1].id) if more else None
        return [row.to_dict() for row in rows], cursor

    def events_after(
        self,
        after_id: int,
        *,
        task_ids: frozenset[str] | None = None,
        user_email: str | None = None,
        until_id: int | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events with ids above after_id (and at most until_id), oldest first."""
        rows = self._event_rows("id, task_id, user_email, payload", after_id, task_ids, user_email, until_id, limit)
        return [Event(id=r[0], task_id=r[1], user_email=r[2], data=r[3]) for r in rows]

    def sse_frames_after(
        self, after_id: int, *, task_ids: frozenset[str] | None = None, user_email: str | None = None,
        limit: int = 1000,
    ) -> tuple[int, int, bytes]:
        """The events after after_id as Server-Sent Events bytes: (how many, the last id, the bytes).

        The replay path: rows go straight to the wire format, with no object per event.
        """
        rows = self._event_rows("id, payload", after_id, task_ids, user_email, None, limit)
        if not rows:
            return 0, after_id, b""
        return len(rows), rows[-1][0], sse_frames(rows)

    def last_event_id(self) -> int:
        """The newest event's id (0 when none): every SSE stream that does not resume starts with it."""
        with self._driver_sql() as (_, sql):
            rows = sql.rows("SELECT max(id) FROM events", {})
        return (rows[0][0] if rows else None) or 0

    def _event_rows(self, columns: str, after_id: int, task_ids: frozenset[str] | None, user_email: str | None,
                    until_id: int | None, limit: int) -> list[tuple[Any, ...]]:
        where, params = ["id > :after_id"], {"after_id": after_id, "limit": limit}
        if until_id is not None:
            where.append("id <= :until_id")
            params["until_id"] = until_id
        if task_ids:
            placeholders, values = DriverSQL.in_list("task", sorted(task_ids))
            where.append(f"task_id IN {placeholders}")
            params.update(values)
        if user_email is not None:
            where.append("user_email = :user_email")
            params["user_email"] = user_email
        with self._driver_sql() as (_, sql):
            return sql.rows(f"SELECT {columns} FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT :limit",
                            params)

    @contextmanager
    def _driver_sql(self) -> Iterator[tuple[Any, DriverSQL]]:
        """A pooled DBAPI connection and plain SQL on its cursor, both given back afterwards.

        Writes (_driver_transaction) and the reads of every stream that opens or resumes (its
        start, its replay) go here: SQLAlchemy's connection and statement machinery took ten
        times as long as the query, and the Socket.IO replay of a restart's reconnecting
        clients was a fifth of the server's CPU.
        """
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                yield connection, DriverSQL(cursor, self.engine.dialect)
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool, which ends a read's transaction

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")


_TASK_COLUMNS = ("id", *TASK_FIELDS)


class DriverSQL:
    """The statements of a task change in plain SQL on one DBAPI cursor, for SQLite and PostgreSQL alike.

    Statements are written with :name parameters and turned into the driver's
    style once (sqlite3 and psycopg2, the two drivers supported); datetimes go
    through the dialect's own conversions, so rows read and written here look
    exactly like those SQLAlchemy reads and writes.
    """

    def __init__(self, cursor: Any, dialect: Any) -> None:
        self.cursor = cursor
        self.dialect = dialect
        self._to_db, self._from_db = _datetime_conversions(dialect)

    def execute(self, statement: str, params: Mapping[str, Any] | list[Mapping[str, Any]]) -> None:
        """Run statement (SQL with :name parameters) once, or once per mapping of a list; datetimes are converted."""
        sql = driver_statement(self.dialect.name, statement)
        if isinstance(params, list):
            self.cursor.executemany(sql, [self._db(p) for p in params])
        else:
            self.cursor.execute(sql, self._db(params))

    def rows(self, statement: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row of a query."""
        self.execute(statement, params)
        return self.cursor.fetchall()

    @staticmethod
    def in_list(name: str, values: Iterable[Any]) -> tuple[str, dict[str, Any]]:
        """An IN list of parameters: ("(:name0, :name1)", {"name0": ..., "name1": ...})."""
        params = {f"{name}{n}": value for n, value in enumerate(values)}
        return "(" + ", ".join(":" + key for key in params) + ")", params

    def read_datetime(self, value: Any) -> datetime:
        """A DateTime column's value as read by this cursor, as SQLAlchemy would give it."""
        return self._from_db(value)

    def _db(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._to_db(v) if isinstance(v, datetime) else v for k, v in values.items()}

    def task(self, task_id: str) -> dict[str, Any] | None:
        self.execute(f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE task_id = :task_id", {"task_id": task_id})
        found = self.cursor.fetchone()
        if found is None:
            return None
        row = dict(zip(_TASK_COLUMNS, found, strict=True))
        row["created_at"], row["updated_at"] = self._from_db(row["created_at"]), self._from_db(row["updated_at"])
        return row

    def insert_task(self, values: Mapping[str, Any]) -> None:
        names = [name for name in TASK_FIELDS if name in values]
        self.execute(f"INSERT INTO tasks ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})",
                     {n: values[n] for n in names})

    def update_task(self, row_id: int, values: Mapping[str, Any]) -> None:
        names = sorted(values)
        self.execute(f"UPDATE tasks SET {', '.join(f'{n} = :{n}' for n in names)} WHERE id = :row_id",
                     {**values, "row_id": row_id})

    def delete_task(self, row_id: int) -> None:
        self.execute("DELETE FROM tasks WHERE id = :row_id", {"row_id": row_id})

    def record_event(self, kind: str, task: dict[str, Any], now: datetime, outbox: Outbox) -> Event:
        """Append the event to the log and its notifications to the outbox."""
        self.execute("INSERT INTO events (type, task_id, user_email, occurred_at, payload) "
                     "VALUES (:type, :task_id, :user_email, :occurred_at, '') RETURNING id",
                     {"type": kind, "task_id": task["task_id"], "user_email": task["user_email"], "occurred_at": now})
        event_id = self.cursor.fetchone()[0]
        payload = {"id": event_id, "type": kind, "task_id": task["task_id"], "task": task,
                   "occurred_at": isoformat(now)}
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        self.execute("UPDATE events SET payload = :payload WHERE id = :event_id",
                     {"payload": data, "event_id": event_id})
        if outbox.targets:
            self.execute(
                "INSERT INTO notifications (event_id, task_id, user_email, channel, recipient, status, attempts, "
                "next_attempt_at, created_at) VALUES (:event_id, :task_id, :user_email, :channel, :recipient, "
                "'pending', 0, :now, :now)",
                [{"event_id": event_id, "task_id": task["task_id"], "user_email": task["user_email"],
                  "channel": channel, "recipient": recipient or task["user_email"], "now": now}
                 for channel, recipient in outbox.targets])
        return Event(id=event_id, task_id=task["task_id"], user_email=task["user_email"], data=data)

    def record_key(self, idempotency: Idempotency, event_id: int, created: bool, now: datetime) -> None:
        """Remember an Idempotency-Key with the event it produced; expired keys go first, so a key may be reused."""
        self.execute("DELETE FROM idempotency_keys WHERE created_at <= :expired",
                     {"expired": now - IDEMPOTENCY_TTL})
        self.execute("INSERT INTO idempotency_keys (owner, \"key\", fingerprint, event_id, created, created_at) "
                     "VALUES (:owner, :key, :fingerprint, :event_id, :created, :created_at)",
                     {"owner": idempotency.owner, "key": idempotency.key, "fingerprint": idempotency.fingerprint,
                      "event_id": event_id, "created": created, "created_at": now})


_PARAM = re.compile(r"(?<!:):(\w+)")


@functools.lru_cache(maxsize=512)
def driver_statement(dialect: str, statement: str) -> str:
    """statement (SQL with :name parameters) in the driver's style; the most used ones remembered.

    Bounded: some statements carry IN lists whose length a client chooses.
    """
    # sqlite3 takes :name as written; psycopg2 wants %(name)s.
    return statement if dialect == "sqlite" else _PARAM.sub(r"%(\1)s", statement.replace("%", "%%"))


@functools.lru_cache(maxsize=8)
def _datetime_conversions(dialect: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The dialect's own conversions of a DateTime column, to the database and back (identity where none)."""
    datetime_type = DateTime().dialect_impl(dialect)
    return (datetime_type.bind_processor(dialect) or (lambda value: value),
            datetime_type.result_processor(dialect, None) or (lambda value: value))


def normalize_url(url: str) -> str:
    """PostgreSQL URLs without a driver get psycopg2, the driver that eventlet and gevent can make cooperative."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _create_engine(url: str, sqlite_synchronous: str = "NORMAL") -> Engine:
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS_LEVELS:
        raise ValueError(f"sqlite_synchronous must be NORMAL or FULL, not {sqlite_synchronous!r}")
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=30, pool_timeout=30)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=10,
        max_overflow=40,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN and cannot do IMMEDIATE;
        # autocommit at the driver level lets the begin hook below say what it means.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "DEFERRED"))

    return engine


def cooperative_postgres() -> None:
    """Make psycopg2 wait for the server through select(), which eventlet and gevent make cooperative.

    Without it a query blocks the whole process, every green thread with it,
    until PostgreSQL answers.
    """
    import psycopg2.extensions
    import psycopg2.extras

    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)


def default_url(instance_path: str) -> str:
    os.makedirs(instance_path, exist_ok=True)
    return "sqlite:///" + os.path.join(instance_path, "tasks.db")


def init_app(app: Flask) -> Store:
    """The app's store from DATABASE_URL (default: SQLite in the instance folder); migrate.py makes its schema."""
    url = app.config.get("DATABASE_URL") or default_url(app.instance_path)
    store = Store(url, sqlite_synchronous=app.config.get("SQLITE_SYNCHRONOUS", "NORMAL"))
    app.extensions["store"] = store
    return store
