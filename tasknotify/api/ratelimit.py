"""The write rate limits (RATE_LIMIT_WRITES, RATE_LIMIT_SERVICE_WRITES), counted per caller with `limits`.

A sliding-window counter (the current and the previous window's counts,
weighted): constant time and memory per caller. It is checked in the write
views' decorator only; Flask-Limiter, which it replaces, ran its machinery
before every request and cost about a fifth of a write's time.

A storage that cannot be reached (Redis down) fails open: the write goes
through, with a warning logged. Nothing else does: an error of the limiter
itself propagates (a 500), so limiting is never turned off unseen.
SweptMemoryStorage overrides a hook of limits by its mangled name; fences.py
checks the hook at start, and `swept=False` is the stock storage it falls back to.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from tasknotify.errors import APIError

logger = logging.getLogger("ratelimit")


SWEEP_SECONDS = 1.0


class SweptMemoryStorage(MemoryStorage):
    """limits' in-process storage, sweeping expired counters once a second.

    Upstream starts a new timer thread 10 ms after each hit, for a sweep that
    only frees memory (a read drops an expired counter by itself); under
    eventlet those timers cost a twentieth of a write's time.
    """

    def _MemoryStorage__schedule_expiry(self) -> None:  # upstream's hook, by its mangled name
        if not self.timer.is_alive():
            self.timer = threading.Timer(SWEEP_SECONDS, self._MemoryStorage__expire_events)
            self.timer.daemon = True
            self.timer.start()


def limit_storage(uri: str, swept: bool = True) -> Storage:
    """The counters' storage: in this process for memory://, otherwise what the URI names (redis://...).

    In process, swept (SweptMemoryStorage) unless swept is False. Any other
    storage raises StorageError when it cannot be reached.
    """
    if uri == "memory://":
        return SweptMemoryStorage() if swept else MemoryStorage()
    return storage_from_string(uri, wrap_exceptions=True)


class WriteLimit:
    """Every limit of a specification such as "10 per second; 1000 per hour", for each caller key."""

    def __init__(self, spec: str, storage_uri: str, swept: bool = True) -> None:
        self.items: list[RateLimitItem] = parse_many(spec)
        self.limiter = SlidingWindowCounterRateLimiter(limit_storage(storage_uri, swept))

    def hit(self, key: str) -> dict[str, str]:
        """Count a request of key against every limit: the X-RateLimit headers of the tightest; 429 when over one."""
        tightest: tuple[int, int, RateLimitItem] | None = None  # (remaining, reset at, limit)
        over = None
        for item in self.items:
            try:
                allowed = self.limiter.hit(item, key)
                reset_at, remaining = self.limiter.get_window_stats(item, key)
            except StorageError:  # the limit's storage (Redis) is down: do not refuse writes for it
                logger.warning("rate-limit storage unavailable: writes are not limited", exc_info=True)
                return {}
            if not allowed and over is None:
                over = item
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, int(math.ceil(reset_at)), item)
        if tightest is None:
            return {}
        remaining, reset_at, item = tightest
        headers = {"X-RateLimit-Limit": str(item.amount), "X-RateLimit-Remaining": str(max(0, remaining)),
                   "X-RateLimit-Reset": str(reset_at)}
        if over is not None:
            retry_after = max(1, reset_at - int(time.time()))
            raise APIError(429, f"rate limit exceeded: {over}", headers={**headers, "Retry-After": str(retry_after)})
        return headers


def write_limited(view: Callable[..., Any]) -> Callable[..., Any]:
    """A view decorator, put where a write view is declared: the request counts against its caller's limit first.

    Which limit and key is the app's `write_limit_for` (tasks_api.init_app sets it:
    users under RATE_LIMIT_WRITES, service tokens under RATE_LIMIT_SERVICE_WRITES).
    """

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limit, key = current_app.extensions["write_limit_for"]()
        headers = limit.hit(key)
        response = current_app.make_response(view(*args, **kwargs))
        response.headers.update(headers)
        return response

    wrapper.write_limited = True  # type: ignore[attr-defined]
    return wrapper
