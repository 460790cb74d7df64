"""Garbage collection for a process that holds thousands of open connections.

CPython's full collection walks every tracked object, and it runs whenever the
objects that survived since the last one reach a quarter of the heap. With
10 000 open streams (about 1.2 million objects) one takes about 0.7 s, and the
whole process, every stream with it, stands still meanwhile; while connections
pour in (a restart's clients coming back) the heap grows by a quarter again and
again, and those collections were a quarter of the server's CPU. So the server
imports with the collector off (app.py) and freezes (gc.freeze) what the start
made, then, every FREEZE_SECONDS, what has lived through a young collection:
automatic collections walk only what is new. Once every FULL_SECONDS everything
is unfrozen and collected, which frees the garbage cycles frozen in the
meantime; that pause remains, once an hour.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

logger = logging.getLogger("heap")

FREEZE_SECONDS = 1.0
FULL_SECONDS = 3600.0


def after_start() -> None:
    """What the start made frozen (no automatic collection walks it again), and the collector on."""
    gc.collect(1)
    gc.freeze()
    gc.enable()


def keep_collections_short(stopping: threading.Event) -> None:
    """Run until stopping is set (a background task of the server process)."""
    last_full = time.monotonic()
    while not stopping.wait(FREEZE_SECONDS):
        if time.monotonic() - last_full >= FULL_SECONDS:
            gc.unfreeze()
            started = time.perf_counter()
            found = gc.collect()
            last_full = time.monotonic()
            logger.info("full garbage collection: %s objects freed in %.0f ms",
                        found, (time.perf_counter() - started) * 1000)
        else:
            gc.collect(1)  # garbage that is already unreachable goes before the freeze, not into it
        gc.freeze()
