"""gunicorn settings for `gunicorn wsgi:app` (see the README's deployment section)."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
# One worker per process: Socket.IO keeps its clients in the process that accepted them.
workers = 1
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "eventlet")
worker_connections = int(os.environ.get("MAX_CONNECTIONS", "10000"))
# Open streams never end by themselves; clients resume by event id after a restart.
graceful_timeout = 10
timeout = 60


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    """Stop the notification workers gracefully when a worker process exits."""
    import wsgi
    from app import shutdown

    shutdown(wsgi.app)
