"""Group commit: writes that queue while one transaction commits share the next; each failure stays its own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from db import Outbox, Store
from support import wait_for
from tasknotify.store.group_commit import GroupCommit

LOG_ONLY = Outbox(targets=(("log", "log"),))


class Missing(LookupError):
    pass


class FakeDatabase:
    """Transactions that record what each one held; a commit can be held back or made to fail."""

    def __init__(self) -> None:
        self.committed: list[list[str]] = []
        self.rolled_back: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.in_commit = threading.Event()
        self.fail_commits = 0

    @contextmanager
    def transaction(self) -> Iterator[list[str]]:
        held: list[str] = []
        try:
            yield held
        except BaseException:
            self.rolled_back.append(held)
            raise
        self.in_commit.set()
        self.hold.wait(10)
        if self.fail_commits:
            self.fail_commits -= 1
            self.rolled_back.append(held)
            raise OSError("the commit failed")
        self.committed.append(held)


def writer(name: str, fail: type[BaseException] | None = None):
    def apply(held: list[str]) -> tuple[str, str]:
        if fail is not None:
            raise fail(name)
        held.append(name)
        return f"result {name}", f"event {name}"
    return apply


def start(group: GroupCommit, name: str, outcomes: dict[str, Any], after_commit: Callable[[str], None],
          fail: type[BaseException] | None = None) -> threading.Thread:
    def run() -> None:
        try:
            outcomes[name] = group.run(writer(name, fail), after_commit)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            outcomes[name] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def queue_behind_a_commit(db: FakeDatabase, group: GroupCommit, names: list[str], outcomes: dict[str, Any],
                          after_commit: Callable[[str], None],
                          fails: dict[str, type[BaseException]] | None = None) -> None:
    """Write "first", hold its commit, queue names meanwhile, then let everything commit."""
    db.hold.clear()
    threads = [start(group, "first", outcomes, after_commit)]
    wait_for(db.in_commit.is_set, 5, "the first commit to start")
    for queued, name in enumerate(names, start=1):
        threads.append(start(group, name, outcomes, after_commit, (fails or {}).get(name)))
        wait_for(lambda n=queued: group.waiting == n, 5, f"{name} to queue")
    db.hold.set()
    for thread in threads:
        thread.join(10)


def test_writes_that_queue_during_a_commit_share_the_next_transaction():
    db = FakeDatabase()
    group = GroupCommit(threading.Lock(), db.transaction)
    outcomes: dict[str, Any] = {}
    published: list[str] = []
    queue_behind_a_commit(db, group, ["a", "b", "c", "d"], outcomes, published.append)
    assert db.committed == [["first"], ["a", "b", "c", "d"]]
    assert published == ["event first", "event a", "event b", "event c", "event d"]
    assert outcomes == {name: f"result {name}" for name in ("first", "a", "b", "c", "d")}


def test_a_group_holds_at_most_max_group_writes_in_order():
    db = FakeDatabase()
    group = GroupCommit(threading.Lock(), db.transaction, max_group=2)
    outcomes: dict[str, Any] = {}
    queue_behind_a_commit(db, group, ["a", "b", "c", "d", "e"], outcomes, lambda event: None)
    assert db.committed == [["first"], ["a", "b"], ["c", "d"], ["e"]]


def test_a_write_that_changed_nothing_leaves_its_group_alone():
    db = FakeDatabase()
    group = GroupCommit(threading.Lock(), db.transaction, tolerated=(Missing,))
    outcomes: dict[str, Any] = {}
    published: list[str] = []
    queue_behind_a_commit(db, group, ["a", "gone", "b"], outcomes, published.append, {"gone": Missing})
    assert db.committed == [["first"], ["a", "b"]]
    assert isinstance(outcomes["gone"], Missing)
    assert published == ["event first", "event a", "event b"]


def test_any_other_failure_rolls_the_group_back_and_runs_each_write_alone():
    db = FakeDatabase()
    group = GroupCommit(threading.Lock(), db.transaction, tolerated=(Missing,))
    outcomes: dict[str, Any] = {}
    published: list[str] = []
    queue_behind_a_commit(db, group, ["a", "bad", "b"], outcomes, published.append, {"bad": ValueError})
    assert db.rolled_back[0] == ["a"]  # the group, up to the failing write
    assert db.committed == [["first"], ["a"], ["b"]]
    assert isinstance(outcomes["bad"], ValueError)
    assert (outcomes["a"], outcomes["b"]) == ("result a", "result b")
    assert published == ["event first", "event a", "event b"]


def test_a_failed_commit_is_retried_write_by_write_and_nobody_hears_success_before_theirs():
    db = FakeDatabase()
    group = GroupCommit(threading.Lock(), db.transaction)
    outcomes: dict[str, Any] = {}
    published: list[str] = []
    db.fail_commits = 3  # "first", then the group of a and b, then "a" alone
    queue_behind_a_commit(db, group, ["a", "b"], outcomes, published.append)
    assert isinstance(outcomes["first"], OSError)
    assert isinstance(outcomes["a"], OSError)
    assert outcomes["b"] == "result b"
    assert db.committed == [["b"]]
    assert db.rolled_back == [["first"], ["a", "b"], ["a"]]
    assert published == ["event b"]


def test_a_failing_after_commit_is_its_own_writers_error():
    db = FakeDatabase()
    group = GroupCommit(threading.Lock(), db.transaction)
    outcomes: dict[str, Any] = {}
    published: list[str] = []

    def after_commit(event: str) -> None:
        if event == "event a":
            raise RuntimeError("the broker is down")
        published.append(event)

    queue_behind_a_commit(db, group, ["a", "b"], outcomes, after_commit)
    assert db.committed == [["first"], ["a", "b"]]
    assert isinstance(outcomes["a"], RuntimeError)
    assert outcomes["b"] == "result b"
    assert published == ["event first", "event b"]


def test_a_missing_task_fails_alone(store: Store):
    with pytest.raises(LookupError):
        store.change_task("nope", {"title": "x"}, mode="patch", outbox=LOG_ONLY, after_commit=lambda e: None)
    _, event, _ = store.change_task("yes", {"user_email": "a@example.com"}, mode="upsert", outbox=LOG_ONLY,
                                    after_commit=lambda e: None)
    assert event.id == 1


class Killed(BaseException):
    """What a green thread killed while it waits receives (GreenletExit, say)."""


class KillsTheFirstWaiter:
    """The write lock, held by another writer (a worker's claim) when the first writer comes to wait for it: that
    writer is killed while it waits; the lock is free for the next."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.killed = False

    def __enter__(self) -> None:
        if not self.killed:
            self.killed = True
            raise Killed()
        self.lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


def test_a_leader_killed_before_its_turn_hands_the_lead_on():
    db = FakeDatabase()
    group = GroupCommit(KillsTheFirstWaiter(), db.transaction)
    outcomes: dict[str, Any] = {}
    with pytest.raises(Killed):
        group.run(writer("killed"), lambda e: None)
    thread = start(group, "next", outcomes, lambda event: None)
    thread.join(10)
    assert outcomes == {"next": "result next"}
    assert db.committed == [["next"]]
