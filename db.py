"""The store's public face: the models, the Store and the helpers that code outside the package uses.

The store itself is tasknotify/store/ (store.py: the engine, the models and the
SQL; group_commit.py, checkpoints.py, migrate.py).
"""

from tasknotify.store.store import (
    MAX_ID,
    Base,
    EventRow,
    Idempotency,
    IdempotencyKey,
    Notification,
    Outbox,
    PreferencesRow,
    Store,
    Task,
    TaskNotFound,
    cooperative_postgres,
    decode_cursor,
    default_url,
    encode_cursor,
    init_app,
    normalize_url,
    utcnow,
)

__all__ = [
    "MAX_ID", "Base", "EventRow", "Idempotency", "IdempotencyKey", "Notification", "Outbox", "PreferencesRow",
    "Store", "Task", "TaskNotFound", "cooperative_postgres", "decode_cursor", "default_url", "encode_cursor",
    "init_app", "normalize_url", "utcnow",
]
