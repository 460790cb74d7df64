"""SQLite checkpoints in the background: no request's commit runs one, and the log still starts over."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from db import Outbox, Store
from tasknotify.store import checkpoints

LOG_ONLY = Outbox(targets=(("log", "log"),))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    from tasknotify.store import migrate

    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    migrate.upgrade(url)
    store = Store(url)
    yield store
    store.dispose()


def pragma(store: Store, name: str) -> int:
    connection = store.engine.raw_connection()
    try:
        return connection.cursor().execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        connection.close()


def write(store: Store, n: int) -> None:
    store.change_task(f"t{n % 50}", {"user_email": "a@example.com", "title": "x" * 200}, mode="upsert",
                      outbox=LOG_ONLY, after_commit=lambda event: None)


def test_started_store_connections_leave_checkpoints_to_the_background(sqlite_store: Store) -> None:
    assert pragma(sqlite_store, "wal_autocheckpoint") == 1000  # SQLite's default until the server starts
    sqlite_store.start()
    assert pragma(sqlite_store, "wal_autocheckpoint") == 0
    sqlite_store.dispose()
    assert pragma(sqlite_store, "wal_autocheckpoint") == 1000


@pytest.mark.parametrize(("logs", "locked"), [
    ([500], []),  # a short log: one pass, no lock
    ([5000, 5600, 5650], [False, False, False, True]),  # fewer frames each pass, the last few under the lock
    ([5000, 5600, 6200, 6800, 7400], [False] * 5 + [True]),  # at most MAX_PASSES, then the lock
    ([5000, 80], [False, False]),  # a writer started the log over: done
])
def test_passes_until_few_frames_are_left_then_one_under_the_write_lock(logs: list[int], locked: list[bool],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Writes landing during a pass keep the log from starting over; the last pass holds writers off.
    lock = threading.Lock()
    seen: list[bool] = []
    results = iter(logs)

    def passive(_connection: object) -> tuple[int, int, int]:
        seen.append(lock.locked())
        log = next(results, logs[-1])
        return 0, log, log

    monkeypatch.setattr(checkpoints, "_passive_checkpoint", passive)
    engine = create_engine("sqlite://")
    checkpoints.Checkpointer(engine, lock)._round()
    assert seen == (locked or [False])


def test_log_starts_over_while_a_writer_keeps_writing(sqlite_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "CHECKPOINT_SECONDS", 0.005)
    monkeypatch.setattr(checkpoints, "RESTART_FRAMES", 50)
    sqlite_store.start()
    wal = Path(sqlite_store.engine.url.database + "-wal")
    for n in range(1500):
        write(sqlite_store, n)
        time.sleep(0.0005)  # a writer that leaves the lock to others now and then, as requests do
    # each write adds a few pages: 1500 writes are ~18 MB of log if it never starts over
    assert wal.stat().st_size < 6 * 1024 * 1024


def test_background_rounds_run_while_writes_go_on(sqlite_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "CHECKPOINT_SECONDS", 0.01)
    rounds = threading.Semaphore(0)
    real = checkpoints.Checkpointer._round

    def counted(self: checkpoints.Checkpointer) -> None:
        real(self)
        rounds.release()

    monkeypatch.setattr(checkpoints.Checkpointer, "_round", counted)
    sqlite_store.start()
    for n in range(20):
        write(sqlite_store, n)
    for _ in range(3):
        assert rounds.acquire(timeout=10)
    wal = Path(sqlite_store.engine.url.database + "-wal")
    assert wal.exists()


def test_in_os_thread_is_a_plain_call_without_green_threads() -> None:
    assert checkpoints.in_os_thread()(threading.get_native_id) == threading.get_native_id()


@pytest.mark.parametrize("library", ["eventlet", "gevent"])
def test_in_os_thread_leaves_the_green_threads_running(library: str) -> None:
    # A call that blocks in C (usleep, as SQLite's fsync would) while a green thread ticks:
    # run in the loop's own thread it would stop the ticks.
    patch = "import eventlet; eventlet.monkey_patch()" if library == "eventlet" else \
        "from gevent import monkey; monkey.patch_all()"
    code = f"""{patch}
import ctypes, threading, time
from tasknotify.store import checkpoints
ticks = []
def ticker():
    for _ in range(5):
        ticks.append(1)
        time.sleep(0.01)
thread = threading.Thread(target=ticker)
thread.start()
def blocking():
    ctypes.CDLL(None).usleep(300000)
    return len(ticks), threading.get_native_id()
seen, native_id = checkpoints.in_os_thread()(blocking)
thread.join()
print(seen, native_id != threading.get_native_id())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == ["5", "True"], out.stderr
