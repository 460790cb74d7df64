"""SQLite's checkpoints moved off the request path, into an OS thread.

In WAL mode SQLite copies the log back into the database file (a checkpoint,
with an fsync) inside whichever commit pushes the log past 1000 pages: every
75th write or so here. That commit then takes 10-20 ms of C code instead of
1, and under eventlet or gevent no other green thread runs meanwhile: every
request and every live stream of the process waits. So the server's own
connections never checkpoint (`wal_autocheckpoint=0`), and a background loop
runs a PASSIVE checkpoint, which waits on no reader or writer, every
CHECKPOINT_SECONDS in a real OS thread (the sqlite3 module releases the GIL
while SQLite works).

The log starts over from its beginning only when a write begins after every
frame in it has been copied back, and writes that come during a checkpoint
would keep that from happening: the log would grow without end. So when the
log holds more than RESTART_FRAMES, more checkpoints follow, each copying
what was written during the one before, until the last one, which copies the
few frames left while holding the process's write lock (writers wait on it;
every other green thread goes on). `journal_size_limit` then cuts the file
back.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import Engine, event

logger = logging.getLogger("checkpoints")

CHECKPOINT_SECONDS = 1.0
RESTART_FRAMES = 1000  # SQLite's own autocheckpoint threshold
FEW_FRAMES = 100  # copied while writers wait
MAX_PASSES = 4
WAL_SIZE_LIMIT = 16 * 1024 * 1024

T = TypeVar("T")


def in_os_thread() -> Callable[[Callable[[], T]], T]:
    """How this process runs a blocking call in an OS thread, so its green threads keep running meanwhile."""
    if "eventlet" in sys.modules:
        from eventlet import patcher, tpool

        if patcher.is_monkey_patched("thread"):
            return tpool.execute
    if "gevent" in sys.modules:
        from gevent import get_hub, monkey

        if monkey.is_module_patched("threading"):
            return lambda call: get_hub().threadpool.apply(call)
    return lambda call: call()  # threads are OS threads already


class Checkpointer:
    """Checkpoints the SQLite database of engine in the background; start() once, stop() is idempotent."""

    def __init__(self, engine: Engine, write_lock: AbstractContextManager[Any], seconds: float | None = None) -> None:
        self.engine = engine
        self.write_lock = write_lock
        self.seconds = CHECKPOINT_SECONDS if seconds is None else seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_blocking = in_os_thread()

    def start(self) -> None:
        event.listen(self.engine, "connect", _no_autocheckpoint)
        self.engine.dispose()  # connections opened before now checkpoint on their own: start afresh
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if event.contains(self.engine, "connect", _no_autocheckpoint):
            event.remove(self.engine, "connect", _no_autocheckpoint)

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint, in an OS thread: (busy, frames in the log, frames checkpointed)."""
        connection = self.engine.raw_connection()
        try:
            return self._run_blocking(lambda: _passive_checkpoint(connection))
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stopping.wait(self.seconds):
            try:
                self._round()
            except Exception:  # the next round retries; writes go on meanwhile, the log grows
                logger.exception("SQLite checkpoint failed")

    def _round(self) -> None:
        _busy, frames, _copied = self.checkpoint()
        for _ in range(MAX_PASSES):
            if frames <= RESTART_FRAMES:
                return
            # each pass copies what was written during the one before, fewer frames every time
            _busy, now, _copied = self.checkpoint()
            if now < frames:
                return  # a writer found the log all copied and started it over
            if now - frames <= FEW_FRAMES:
                break
            frames = now
        with self.write_lock:
            self.checkpoint()


def _passive_checkpoint(connection: Any) -> tuple[int, int, int]:
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return tuple(cursor.fetchone())
    finally:
        cursor.close()


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cursor.close()
