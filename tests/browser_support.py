"""Helpers for the browser tests: the API server as a subprocess, a static file server, tokens, skips."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
ANGULAR_DIST = ROOT / "clients" / "angular" / "dist" / "task-updates-app" / "browser"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
SECRET = "browser-test-secret-key-long-enough-for-hs256-0123456789abcdef"
USER = "test@example.com"
USER_SCOPES = ("tasks:read", "tasks:write", "updates:read")


def skip_or_fail(reason: str) -> None:
    """Skip the test with reason; under CI=true, fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_chromium() -> None:
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: run bin/setup-browser (it installs Debian's chromium)")


def require_angular_build() -> Path:
    if not (ANGULAR_DIST / "index.html").exists():
        skip_or_fail(f"the Angular app is not built ({ANGULAR_DIST}/index.html is missing): run bin/setup-browser")
    return ANGULAR_DIST


def make_token(user: str = USER, scopes: tuple[str, ...] = USER_SCOPES, expires_in: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "scope": " ".join(scopes), "iat": now, "exp": now + expires_in}, SECRET,
                      algorithm="HS256")


@dataclass
class ApiServer:
    """`python app.py` (eventlet) in a subprocess, with its own SQLite database in instance_path."""

    instance_path: Path
    port: int = field(default_factory=free_port)
    cors_origins: list[str] = field(default_factory=list)
    database_url: str | None = None  # None: SQLite in instance_path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # more settings (e.g. SMTP_HOST)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ApiServer:
        env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "INSTANCE_PATH": str(self.instance_path),
            "NOTIFY_WORKERS": "1",
            "SECRET_KEY": SECRET,
            "CORS_ORIGINS": ",".join(self.cors_origins) or "http://127.0.0.1:4200",
            "SSE_HEARTBEAT_SECONDS": "1",
            "RATE_LIMIT_WRITES": "100000 per minute",
            "RATE_LIMIT_SERVICE_WRITES": "100000 per minute",
            # bin/test's other passes: PostgreSQL (the database_url fixture) and gevent.
            "DATABASE_URL": self.database_url or "",
            "ASYNC_MODE": os.environ.get("TEST_ASYNC_MODE", "eventlet"),
            "LOG_LEVEL": "WARNING",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
            **self.env,
        }
        env.pop("AUTH_DISABLED", None)
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env)

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode} before it answered")
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        try:
            wait_for(healthy, timeout, f"{self.url}/healthz")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within timeout."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def post_update(self, token: str | None, **body: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = requests.post(f"{self.url}/update_task", json={"user_email": USER, **body}, headers=headers,
                                 timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticServer:
    """Serves a directory on http://127.0.0.1:<port> from a thread (its own origin for the app under test)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port or 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="static-server", daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


_saved: list[float] = []  # when this process saved its screenshots (xdist workers share test-artifacts/)


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    _saved.append(time.time())
    return path


def saved_since(started: float) -> bool:
    """Whether this process saved a screenshot since started (a test runs in one process at a time)."""
    return any(at >= started for at in _saved)
