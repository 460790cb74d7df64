from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import create_app, shutdown  # noqa: E402
from db import Store  # noqa: E402
from support import SECRET, LiveServer, RedisServer, SMTPServer, postgres_database  # noqa: E402
from tasknotify.store import migrate  # noqa: E402

# TEST_DATABASE=postgresql runs every test on its own PostgreSQL database (bin/test does, after SQLite).
TEST_DATABASE = os.environ.get("TEST_DATABASE", "sqlite")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# TEST_ASYNC_MODE=gevent runs the live servers under gevent instead of eventlet.
ASYNC_MODE = os.environ.get("TEST_ASYNC_MODE", "eventlet")


# Test modules whose subject does not depend on the database (the protocols, the HTTP server, the
# edge, tokens, the broker, the docs): marked store_agnostic, so bin/test's PostgreSQL pass leaves them
# to the SQLite pass (-m "not store_agnostic"). The store, delivery, the API and the streams' replay
# run on both.
STORE_AGNOSTIC = {
    "test_broker", "test_browser", "test_churn", "test_client_notes", "test_docs", "test_edge", "test_fanout",
    "test_fences", "test_heap", "test_hostile_streams", "test_hot_path", "test_http_server", "test_jwks",
    "test_nginx", "test_protocol", "test_redis_broker", "test_rooms",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in STORE_AGNOSTIC:
            item.add_marker(pytest.mark.store_agnostic)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A database of this test's own: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if TEST_DATABASE != "postgresql":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
        return
    with postgres_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (bin/test installs it with apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A store on this test's own database, with the schema the migrations make."""
    migrate.upgrade(database_url)
    store = Store(database_url)
    yield store
    store.dispose()


@pytest.fixture
def make_app(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Flask]]:
    """Build apps on a temporary database (threading mode, in this process); stopped at the end."""
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        settings = {"INSTANCE_PATH": str(tmp_path / f"instance{len(apps)}"), "NOTIFY_WORKERS": 0,
                    "DATABASE_URL": database_url,
                    "AUTH_DISABLED": True, "SECRET_KEY": SECRET, "RATE_LIMIT_WRITES": "100000 per minute",
                    "RATE_LIMIT_SERVICE_WRITES": "100000 per minute", **config}
        app = create_app(settings)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        shutdown(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def start_server(tmp_path: Path, database_url: str) -> Iterator[Callable[..., LiveServer]]:
    """Start `python app.py` subprocesses on a temporary instance folder; all are stopped at the end."""
    servers: list[LiveServer] = []

    def start(script: str = "app.py", **env: Any) -> LiveServer:
        settings = {
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "DATABASE_URL": database_url,
            "ASYNC_MODE": ASYNC_MODE,
            "NOTIFY_BACKOFF_SECONDS": "0.05",
            "NOTIFY_POLL_SECONDS": "0.2",
            "LOG_LEVEL": "INFO",
            "SECRET_KEY": SECRET,
            "RATE_LIMIT_WRITES": "100000 per minute",
            "RATE_LIMIT_SERVICE_WRITES": "100000 per minute",
            **{k: str(v) for k, v in env.items()},
        }
        server = LiveServer(env=settings, log_path=tmp_path / f"server{len(servers)}.log", script=script)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.kill9()


@pytest.fixture
def live_server(start_server: Callable[..., LiveServer], smtp: SMTPServer) -> LiveServer:
    return start_server(**smtp.env)
