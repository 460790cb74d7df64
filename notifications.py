"""Delivery's public face: the outbox worker and what code outside the package uses of it.

Delivery itself is tasknotify/delivery/ (worker.py: the worker pool and the
`flask worker` command; channels.py, webhooks.py, templates.py, preferences.py).
"""

from tasknotify.delivery.worker import (
    NotificationWorker,
    RetryPolicy,
    WorkerState,
    get_notification,
    init_app,
    list_notifications,
    outbox_targets,
    retry_dead,
    worker_command,
)

__all__ = [
    "NotificationWorker", "RetryPolicy", "WorkerState", "get_notification", "init_app", "list_notifications",
    "outbox_targets", "retry_dead", "worker_command",
]
