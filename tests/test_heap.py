"""The server's garbage-collection policy: long-lived objects frozen, everything collected now and then."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from support import wait_for
from tasknotify import heap


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch):
    stopping = threading.Event()

    def run(freeze_seconds: float, full_seconds: float) -> threading.Thread:
        monkeypatch.setattr(heap, "FREEZE_SECONDS", freeze_seconds)
        monkeypatch.setattr(heap, "FULL_SECONDS", full_seconds)
        thread = threading.Thread(target=heap.keep_collections_short, args=(stopping,), daemon=True)
        thread.start()
        return thread

    yield run
    stopping.set()
    gc.unfreeze()


def test_survivors_are_frozen_so_automatic_collections_skip_them(policy) -> None:
    gc.unfreeze()
    policy(0.01, 3600)
    wait_for(lambda: gc.get_freeze_count() > 0, 5, "a freeze")


def test_a_full_collection_frees_cycles_that_were_frozen(policy) -> None:
    gc.unfreeze()
    gc.disable()  # only the policy collects here
    try:
        cycle = weakref.ref(Cycle())  # unreachable at once, but only a collection frees it
        gc.freeze()
        policy(0.01, 0.0)  # every round is a full collection
        wait_for(lambda: cycle() is None, 5, "the frozen cycle collected")
    finally:
        gc.enable()


def test_the_start_is_frozen_and_the_collector_turned_back_on() -> None:
    """app.py imports with the collector off; after the start what it made is frozen and collections resume."""
    gc.unfreeze()
    gc.disable()
    try:
        kept = [Cycle() for _ in range(100)]  # what a start leaves: long-lived objects
        heap.after_start()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
        gc.enable()

