from __future__ import annotations

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
from support import SECRET, LiveServer, SMTPServer  # noqa: E402


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build apps on a temporary database (threading mode, in this process); stopped at the end."""
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        settings = {"INSTANCE_PATH": str(tmp_path / f"instance{len(apps)}"), "NOTIFY_WORKERS": 0,
                    "AUTH_DISABLED": True, "SECRET_KEY": SECRET, "RATE_LIMIT_WRITES": "100000 per minute", **config}
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
def start_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start `python app.py` subprocesses on a temporary instance folder; all are stopped at the end."""
    servers: list[LiveServer] = []

    def start(**env: Any) -> LiveServer:
        settings = {
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "NOTIFY_BACKOFF_SECONDS": "0.05",
            "NOTIFY_POLL_SECONDS": "0.2",
            "LOG_LEVEL": "INFO",
            "SECRET_KEY": SECRET,
            "RATE_LIMIT_WRITES": "100000 per minute",
            **{k: str(v) for k, v in env.items()},
        }
        server = LiveServer(env=settings, log_path=tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.kill9()


@pytest.fixture
def live_server(start_server: Callable[..., LiveServer], smtp: SMTPServer) -> LiveServer:
    return start_server(**smtp.env)
