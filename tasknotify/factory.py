"""The service's assembly: `create_app()` builds it, `start()` and `shutdown()` run it, `main()` serves it.

app.py at the top of the repository is the entry point: run as a script, it
monkey patches (eventlet, or gevent with ASYNC_MODE=gevent) before anything
else is imported, then calls main(). Imported (by `flask --app app`, by
tests), nothing is patched and the app runs in Flask-SocketIO's threading mode.
"""

import functools
import logging
import os
import resource
import signal
import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from flask_cors import CORS
from werkzeug.routing import MapAdapter

from tasknotify import errors, fences, heap, launch
from tasknotify.api import auth, diagnostics, edge, metrics, openapi, pages
from tasknotify.api import preferences as preferences_api
from tasknotify.api import tasks as tasks_api
from tasknotify.config import ROOT, load_config
from tasknotify.delivery import worker as notifications
from tasknotify.delivery.templates import as_templates_dir
from tasknotify.live import streams
from tasknotify.live.broker import Broker, InMemoryBroker, RelayedBroker, WakeUps
from tasknotify.live.takeover import httpserver
from tasknotify.store import migrate
from tasknotify.store import store as db

logger = logging.getLogger("app")


class NoSessions(SessionInterface):
    """No cookie sessions: requests carry their token, and Flask's default built a signing serializer per request."""

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return None  # Flask then gives the request its null session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        return None


class App(Flask):
    """Flask, matching no URL rule for Socket.IO events."""

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        # Flask-SocketIO runs each event in a request context made from its connection's
        # environ, whose path (/socket.io/) no rule matches: Flask keeps the NotFound on the
        # request, and its traceback holds the event's whole stack (the connection's objects
        # with it) in a reference cycle, freed only by a garbage collection (see heap.py).
        if request is not None and request.path.startswith("/socket.io/"):
            return None
        return super().create_url_adapter(request)


def load_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting (config.load_config), the email templates of EMAIL_TEMPLATES_DIR checked by delivery."""
    return load_config(environ, parsers={"EMAIL_TEMPLATES_DIR": as_templates_dir})


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then config. Nothing runs until start(app)."""
    settings = load_settings()
    settings.setdefault("ASYNC_MODE", "threading")
    settings.update(config or {})
    # No static folder: the live page is served by pages.py, with its security policy.
    # Named for its entry point, app.py: Flask's logger is "app", its default instance folder instance/ beside it
    # and its templates in templates/ at the top of the repository.
    app = App("app", root_path=str(ROOT), instance_path=settings.get("INSTANCE_PATH") or None, static_folder=None)
    app.config.from_mapping(settings)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.session_interface = NoSessions()

    fence = fences.of(app)  # the self-check of the library internals, made by the parts that use them
    errors.init_app(app)
    auth.init_app(app)
    CORS(
        app,
        origins=app.config["CORS_ORIGINS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
        expose_headers=["Retry-After", "Idempotent-Replayed", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                        "X-RateLimit-Reset"],
        always_send=False,
        max_age=600,
    )
    store = db.init_app(app)
    migrate.upgrade_on_start(store)  # the schema, created or brought up to date on every start
    broker = make_broker(app.config, store)
    app.extensions["broker"] = broker
    observer = metrics.Metrics()
    # With a shared broker, `flask worker` is woken by the events other processes commit.
    wake_ups = WakeUps(broker) if app.config.get("REDIS_URL") else None
    worker = notifications.init_app(app, store, observer, wake_ups)
    app.extensions["outbox"] = db.Outbox(notifications.outbox_targets(worker.channels, app.config))
    hub = streams.init_app(app, store, broker, functools.partial(auth.authenticate, allow_query_token=True))
    tasks_api.init_app(app)
    preferences_api.init_app(app)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(pages.bp)
    diagnostics.init_app(app)
    observer.init_app(app, stream_counts=lambda: hub.counts, outbox_counts=lambda: metrics.outbox_counts(store))
    observer.registry.register(fence.gauge())
    app.cli.add_command(notifications.worker_command)
    app.cli.add_command(migrate.db_cli)
    edge.init_app(app)  # outermost: proxy headers, allowed hosts and request bodies, for every path
    return app


def make_broker(config: Mapping[str, Any], store: db.Store) -> Broker:
    """In-process by default (one process only); with REDIS_URL, shared by every process through Redis."""
    if not config.get("REDIS_URL"):
        return InMemoryBroker(config["STREAM_QUEUE_SIZE"])
    from tasknotify.live.redis_broker import RedisBroker  # only a scaled-out deployment needs redis installed

    remote = RedisBroker(config["REDIS_URL"], channel=config["REDIS_CHANNEL"], queue_size=config["STREAM_QUEUE_SIZE"])
    return RelayedBroker(remote, store, config["STREAM_QUEUE_SIZE"])


def start(app: Flask) -> None:
    """Start the notification workers, the Socket.IO relay and the store's upkeep (python app.py does; tests may)."""
    app.extensions["store"].start()
    auth.start(app)
    app.extensions["notifications"].start()
    app.extensions["streams"].start()


def shutdown(app: Flask) -> None:
    """Stop the workers (in-flight deliveries get the grace period), close the streams; idempotent."""
    auth.stop(app)
    app.extensions["notifications"].stop(app.config["NOTIFY_STOP_GRACE_SECONDS"])
    app.extensions["streams"].stop()
    app.extensions["broker"].close()
    app.extensions["store"].dispose()


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards wanted (each connection is a file); return the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def main(listener: Any = None) -> None:
    """Serve until SIGTERM or SIGINT, on listener when given (launch.open_listener, opened before the imports)."""
    try:
        settings = load_settings()
    except ValueError as exc:
        raise SystemExit(f"configuration: {exc}") from None
    logging.basicConfig(level=settings["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode = os.environ.get("ASYNC_MODE", "eventlet")
    if mode not in ("eventlet", "gevent", "threading"):
        raise SystemExit(f"ASYNC_MODE must be eventlet, gevent or threading, not {mode!r}")
    if mode != "threading" and (settings["DATABASE_URL"] or "").startswith(("postgres", "postgresql")):
        db.cooperative_postgres()
    if mode != "threading" and listener is None:
        listener = launch.open_listener()
    app = create_app({"ASYNC_MODE": mode})
    start(app)
    heap.after_start()
    socketio = app.extensions["socketio"]
    gc_stopping = threading.Event()
    socketio.start_background_task(heap.keep_collections_short, gc_stopping)
    if app.config["AUTH_DISABLED"] and settings["HOST"] not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("AUTH_DISABLED=1 while listening on %s: every machine that reaches this port may read "
                       "and write every task", settings["HOST"])
    # MAX_CONNECTIONS connections being served, and as many live streams (taken over from the server).
    files = raise_open_files_limit(2 * settings["MAX_CONNECTIONS"] + 256)
    if files < 2 * settings["MAX_CONNECTIONS"]:
        logger.warning("open-file limit %s is below twice MAX_CONNECTIONS %s (raise it with ulimit -n)",
                       files, settings["MAX_CONNECTIONS"])

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        socketio.start_background_task(_stop_and_exit)

    def _stop_and_exit() -> None:
        gc_stopping.set()
        shutdown(app)
        logger.info("stopped")
        logging.shutdown()
        os._exit(0)  # open streams would hold the server's own shutdown; clients resume by event id

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("serving on http://%s:%s (%s)", settings["HOST"], settings["PORT"], mode)
    if mode == "threading":
        socketio.run(app, host=settings["HOST"], port=settings["PORT"], log_output=False)
    else:
        limits = httpserver.Limits(settings["HEADER_TIMEOUT_SECONDS"], settings["KEEPALIVE_IDLE_SECONDS"])
        fence = fences.of(app)
        httpserver.serve(app, listener, mode, max_connections=settings["MAX_CONNECTIONS"], limits=limits,
                         guards=fence.check("http-guards", mode),
                         lean_buffers=mode == "eventlet" and fence.check("lean-buffers"))
    _stop_and_exit()
