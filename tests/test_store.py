"""The store: one transaction for task, event and outbox rows; growing event ids; concurrent writers."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, func, select

from db import EventRow, Notification, Outbox, Store, Task, decode_cursor, encode_cursor
from tasknotify.store.store import driver_statement

EMAIL_AND_LOG = Outbox(targets=(("email", None), ("log", "log")))


def rows(store: Store) -> tuple[int, int, int]:
    with store.read() as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Task, EventRow, Notification))


def test_change_writes_task_event_and_one_outbox_row_per_channel(store):
    published = []
    task, event, created = store.change_task("7", {"user_email": "a@example.com", "title": "t"}, mode="upsert",
                                             outbox=EMAIL_AND_LOG, after_commit=published.append)
    assert created and task["title"] == "t"
    assert published == [event]
    assert rows(store) == (1, 1, 2)
    with store.read() as session:
        notes = list(session.scalars(select(Notification).order_by(Notification.id)))
    assert [(n.channel, n.recipient, n.status, n.event_id) for n in notes] == [
        ("email", "a@example.com", "pending", event.id),
        ("log", "log", "pending", event.id),
    ]


class BrokenTargets:
    """Outbox targets that fail half way: the whole change must roll back."""

    def __iter__(self):
        yield ("log", "log")
        raise RuntimeError("disk full")


def test_failed_transaction_leaves_nothing(store):
    published = []
    with pytest.raises(RuntimeError):
        store.change_task("7", {"user_email": "a@example.com"}, mode="upsert",
                          outbox=Outbox(targets=BrokenTargets()), after_commit=published.append)  # type: ignore[arg-type]
    assert rows(store) == (0, 0, 0)
    assert published == []


def test_event_ids_only_grow_even_after_deletes(store):
    ids = []
    for n in range(3):
        _, event, _ = store.change_task(f"t{n}", {"user_email": "a@example.com"}, mode="upsert",
                                        outbox=EMAIL_AND_LOG, after_commit=lambda e: None)
        ids.append(event.id)
    with store.write() as session:
        session.execute(Notification.__table__.delete())
        session.execute(EventRow.__table__.delete().where(EventRow.id == ids[-1]))
    _, event, _ = store.change_task("t9", {"user_email": "a@example.com"}, mode="upsert",
                                    outbox=EMAIL_AND_LOG, after_commit=lambda e: None)
    assert ids == [1, 2, 3] and event.id == 4


def test_fifty_concurrent_writers_never_see_database_is_locked(store):
    """And on PostgreSQL they share commits (group_commit.py); on SQLite each commits alone."""
    errors: list[BaseException] = []
    published: list[int] = []
    lock = threading.Lock()
    checkouts: list[int] = []  # a write transaction takes one connection from the engine's pool
    event.listen(store.engine, "checkout", lambda *_: checkouts.append(1))

    def record(committed):
        with lock:
            published.append(committed.id)

    def writer(n: int) -> None:
        try:
            for i in range(5):
                store.change_task(f"w{n}", {"user_email": "a@example.com", "title": str(i)}, mode="upsert",
                                  outbox=EMAIL_AND_LOG, after_commit=record)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    transactions = len(checkouts)
    assert errors == []
    assert rows(store) == (50, 250, 500)
    assert published == sorted(published) == list(range(1, 251))  # published in id order
    if store.is_sqlite:
        assert transactions == 250
    else:
        assert transactions < 200, f"{transactions} commits for 250 writes"


def test_replay_reads_after_an_id_with_filters(store):
    for n in range(6):
        store.change_task(f"t{n % 3}", {"user_email": f"u{n % 2}@example.com"}, mode="upsert",
                          outbox=EMAIL_AND_LOG, after_commit=lambda e: None)
    assert [e.id for e in store.events_after(2)] == [3, 4, 5, 6]
    assert [e.id for e in store.events_after(0, task_ids=frozenset({"t1"}))] == [2, 5]
    assert [e.id for e in store.events_after(0, user_email="u1@example.com")] == [2, 4, 6]
    assert [e.id for e in store.events_after(0, until_id=3, limit=2)] == [1, 2]
    assert store.last_event_id() == 6
    count, last, frames = store.sse_frames_after(1, task_ids=frozenset({"t1", "t2"}), limit=3)
    expected = [e for e in store.events_after(1) if e.task_id in ("t1", "t2")][:3]
    assert (count, last) == (3, expected[-1].id)
    assert frames == b"".join(e.sse_frame for e in expected)
    assert store.sse_frames_after(6) == (0, 6, b"")


def test_cursor_round_trip_and_refusal():
    assert decode_cursor(encode_cursor(12345)) == 12345
    for bad in ("!!", "bm90LWEtbnVtYmVy", ""):
        with pytest.raises(ValueError):
            decode_cursor(bad)


def synchronous_level(store: Store) -> int:
    connection = store.engine.raw_connection()
    try:
        return connection.cursor().execute("PRAGMA synchronous").fetchone()[0]
    finally:
        connection.close()


def test_sqlite_commits_wait_for_the_disk_only_when_asked(make_app, tmp_path):
    normal = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'normal.db'}")
    full = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'full.db'}", SQLITE_SYNCHRONOUS="FULL")
    assert synchronous_level(normal.extensions["store"]) == 1  # NORMAL
    assert synchronous_level(full.extensions["store"]) == 2  # FULL
    with pytest.raises(ValueError, match="NORMAL or FULL"):
        Store(f"sqlite:///{tmp_path / 'bad.db'}", sqlite_synchronous="OFF; DROP TABLE tasks")


def test_the_server_runs_with_full_sync_and_refuses_an_unknown_level(start_server, tmp_path):
    import subprocess
    import sys

    from support import ROOT

    server = start_server(DATABASE_URL=f"sqlite:///{tmp_path / 'full.db'}", SQLITE_SYNCHRONOUS="full")
    answer = server.post("/update_task", {"task_id": "123", "user_email": "test@example.com"})
    assert answer.status_code == 200 and answer.json()["event_id"] == 1
    refused = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "SQLITE_SYNCHRONOUS": "OFF",
                                  "INSTANCE_PATH": str(tmp_path / "refused")})
    assert refused.returncode != 0
    assert "configuration: invalid value for SQLITE_SYNCHRONOUS: 'OFF'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_driver_statements_remembered_are_bounded(store):
    """A replay's IN list of task ids has the length a client chooses: the statements' driver forms are remembered
    up to a bound."""
    driver_statement.cache_clear()
    for length in range(1, 600):
        assert store.sse_frames_after(0, task_ids=frozenset(f"t{n}" for n in range(length))) == (0, 0, b"")
    assert driver_statement.cache_info().currsize <= 512
    assert driver_statement("postgresql", "SELECT :a, '%'") == "SELECT %(a)s, '%%'"
