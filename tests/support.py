"""Test helpers: a live server subprocess, a real SMTP server, SSE and Socket.IO clients, waits."""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.client
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import engineio
import pytest
import requests
import socketio
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of server_url, dropped on exit; skips when unreachable."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from db import normalize_url

    server = make_url(normalize_url(server_url))
    require_service(server.host or "127.0.0.1", server.port or 5432, "PostgreSQL")
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def require_service(host: str, port: int, name: str) -> None:
    """Skip the test when a service it needs is not listening; under CI=true, fail instead."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc}); bin/test starts it, or see the README"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


# The servers' ports come from below the kernel's ephemeral range (32768 and up), so no client connection's
# source port takes one between its choice and the server's bind; each pytest-xdist worker (bin/test runs
# several) draws from a block of its own, so no two workers choose the same port.
PORTS_FROM, PORTS_PER_WORKER, PORT_BLOCKS = 20000, 1000, 12
_port_offsets = itertools.count()


def _port_block() -> int:
    """Where this process's ports start: its own block for each xdist worker (gw0, gw1, ...), block 0 without."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    return PORTS_FROM + (index % PORT_BLOCKS) * PORTS_PER_WORKER


def free_port() -> int:
    """A port nothing is bound to, on 127.0.0.1, not handed out again by this process for a thousand calls."""
    start = _port_block()
    for _ in range(PORTS_PER_WORKER):
        port = start + next(_port_offsets) % PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT is passed over too
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {start}-{start + PORTS_PER_WORKER - 1}")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> Any:
    """Return predicate()'s first truthy value, checking often; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.01)


# -- the server ------------------------------------------------------------------


def on_fallback(part: str) -> bool:
    """Whether this test run forces part of the self-check (fences.py) onto its fallback (SELF_CHECK_FAIL)."""
    forced = {name.strip() for name in os.environ.get("SELF_CHECK_FAIL", "").split(",")}
    return part in forced or "all" in forced


def takeover_off(transport: str = "socketio") -> str | None:
    """Why this run's servers do not take live streams of transport ("sse", "socketio") over from their HTTP
    server (fanout.py), or None when they do (eventlet and gevent take both over alike)."""
    mode = os.environ.get("TEST_ASYNC_MODE", "eventlet")
    if mode not in ("eventlet", "gevent"):
        return f"writing straight to sockets is eventlet's and gevent's path, not {mode}'s"
    if os.environ.get("DIRECT_WRITES", "1").strip().lower() not in ("1", "true", "yes", "on"):
        return "DIRECT_WRITES=0: every stream is on the queued path"
    part = "takeover" if mode == "eventlet" else "gevent-takeover"
    if on_fallback(part):
        return f"SELF_CHECK_FAIL forces the part {part} onto its fallback, the queued path"
    return None


DEFAULT: Any = object()  # "the server's admin token" where a token may be given
SECRET = "test-secret-key-that-is-long-enough-for-hs256-and-for-hs512-too-0123456789"
ALL_SCOPES = ("tasks:write", "tasks:read", "updates:read", "admin")


def make_token(user: str = "admin@example.com", scopes: tuple[str, ...] = ALL_SCOPES, expires_in: int = 3600,
               secret: str = SECRET) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": user, "scope": " ".join(scopes), "iat": now, "exp": now + expires_in}, secret,
                      algorithm="HS256")


@dataclass
class LiveServer:
    """`python app.py` (eventlet, as users run it) in a subprocess on a free port.

    Requests made through it carry an admin token unless told otherwise (token=None sends none).
    """

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    token: str = field(default_factory=make_token)
    script: str = "app.py"  # what runs the server (tests/break_internals.py runs app.py with parts broken)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LiveServer:
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen([sys.executable, self.script], cwd=ROOT, env=env, stdout=log, stderr=log)
        log.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # listening, but still starting on a busy machine
                return False

        wait_for(ready, timeout, "the server to answer /healthz")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send sig and wait for the exit; kill -9 if it does not come. Returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored signal {sig} for {timeout}s:\n{self.log()}") from None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _headers(self, token: Any, headers: dict[str, str] | None) -> dict[str, str]:
        token = self.token if token is DEFAULT else token
        return {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}

    def post(self, path: str, body: Any, token: Any = DEFAULT, headers: dict[str, str] | None = None,
             **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self._headers(token, headers), timeout=10,
                             **kwargs)

    def get(self, path: str, token: Any = DEFAULT, headers: dict[str, str] | None = None,
            **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, headers=self._headers(token, headers), timeout=10, **kwargs)

    def sse(self, path: str = "/task_updates", token: Any = DEFAULT,
            headers: dict[str, str] | None = None) -> SSEClient:
        return SSEClient(self.url + path, headers=self._headers(token, headers)).start()

    def socketio(self, auth: dict[str, Any] | None = None, token: Any = DEFAULT) -> SocketIOClient:
        token = self.token if token is DEFAULT else token
        return SocketIOClient(self.url, auth={**({"token": token} if token else {}), **(auth or {})}).connect()


def refused_start(tmp_path: Path, **env: str) -> str:
    """Run `python app.py` with env (and little else), which must refuse to start: the one line it printed."""
    refused = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore", "PORT": str(free_port()),
                                  "INSTANCE_PATH": str(tmp_path / "instance"), **env})
    assert refused.returncode != 0, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    return lines[0]


def settings_error(**env: str) -> str:
    """Why the settings env are refused: what `python app.py` prints after "configuration: " (in this process)."""
    from tasknotify.factory import load_settings

    with pytest.raises(ValueError) as refused:
        load_settings(env)
    return str(refused.value)


# -- SMTP --------------------------------------------------------------------------


class RecordingSMTPHandler:
    """An aiosmtpd handler that records messages; it can be slow, refuse a recipient or DATA, or hold DATA."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.delay = 0.0
        self.temporary_failures = 0  # answer 451 to this many DATA commands first
        # RCPT TO replies to give an address, in order, before it is accepted (e.g. ["550 5.1.1 No such user"])
        self.rcpt_replies: dict[str, list[str]] = {}
        self.rcpt_attempts: Counter[str] = Counter()  # RCPT TO commands seen, per address
        self.mail_replies: list[str] = []  # MAIL FROM replies to give, in order, before a sender is accepted
        self.gate = threading.Event()  # DATA waits for it (set: open)
        self.gate.set()
        self.data_started = 0
        self._lock = threading.Lock()

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        with self._lock:
            if self.mail_replies:
                return self.mail_replies.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        with self._lock:
            self.rcpt_attempts[address] += 1
            replies = self.rcpt_replies.get(address)
            if replies:
                return replies.pop(0)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.data_started += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            if self.temporary_failures > 0:
                self.temporary_failures -= 1
                return "451 4.3.0 Try again later"
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message)  # type: ignore[arg-type]
            self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def received(self) -> list[tuple[EmailMessage, list[str]]]:
        """Each message with its recipients, read together while none is being added."""
        with self._lock:
            return list(zip(self.messages, self.recipients, strict=True))


class SMTPServer:
    """aiosmtpd on a fixed free port, which can be stopped (nothing listens) and started again.

    smtputf8=False makes a server that does not offer SMTPUTF8 (internationalized addresses).
    """

    def __init__(self, *, smtputf8: bool = True) -> None:
        self.handler = RecordingSMTPHandler()
        self.port = free_port()
        self.smtputf8 = smtputf8
        self.controller: Controller | None = None

    def start(self) -> SMTPServer:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     enable_SMTPUTF8=self.smtputf8)
        self.controller.start()
        return self

    def stop(self) -> None:
        """Stop listening; idempotent."""
        self.handler.gate.set()
        if self.controller is not None:
            self.controller.stop()
            self.controller.loop.close()
            self.controller = None

    @property
    def env(self) -> dict[str, str]:
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "MAIL_FROM": "tasks@notify.test"}


# -- stream clients ----------------------------------------------------------------


class SSEClient:
    """Reads /task_updates over a real HTTP connection in a thread and keeps what arrives."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.events: list[dict[str, Any]] = []
        self.ids: list[int] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.last_event_id: int | None = None  # as a browser's EventSource keeps it
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.closed = threading.Event()
        self.error: BaseException | None = None
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SSEClient:
        self._thread.start()
        wait_for(lambda: self.status is not None or self.closed.is_set(), 10, "the SSE response")
        return self

    def _run(self) -> None:
        url = urlsplit(self.url)
        if url.scheme == "https":  # trusting REQUESTS_CA_BUNDLE, as the tests' requests calls do
            context = ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE"))
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(url.hostname, url.port, timeout=5,
                                                                                  context=context)
        else:
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
        try:
            connection.connect()
            self._socket = connection.sock
            connection.sock.settimeout(60)
            connection.request("GET", url.path + (f"?{url.query}" if url.query else ""), headers=self.headers)
            response = connection.getresponse()
            self.response_headers = dict(response.getheaders())
            self.status = response.status
            buffer = b""
            while chunk := response.read1(65536):
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._parse(block.decode())
        except Exception as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        finally:
            connection.close()
            self.closed.set()

    def _parse(self, block: str) -> None:
        data, event_id = [], None
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                self.comments.append(value)
            elif name == "id":
                event_id = self.last_event_id = int(value)
            elif name == "data":
                data.append(value)
            elif name == "retry":
                self.retry = int(value)
        if data:
            payload = json.loads("\n".join(data))
            assert event_id == payload["id"], "the id: line must match the payload's id"
            self.events.append(payload)
            self.ids.append(event_id)

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.events) >= count, timeout, f"{count} SSE events (have {len(self.events)})")
        return self.events

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)  # unblocks the reader, which then closes the connection
            except OSError:
                pass
        self._thread.join(5)


class _InOrderEngineIOClient(engineio.Client):
    """Engine.IO's client, handing each message to its handlers in the order it arrived.

    The stock client starts a thread per message, so under load two events could
    be recorded in the opposite order of their arrival (seen once in a full run).
    """

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class _InOrderClient(socketio.Client):
    def _engineio_client_class(self) -> type:
        return _InOrderEngineIOClient


class SocketIOClient:
    """python-socketio's client over websocket, keeping every task_update it receives, in the order it arrived."""

    def __init__(self, url: str, auth: dict[str, Any] | None = None) -> None:
        self.url = url
        self.auth = auth
        self.events: list[dict[str, Any]] = []
        self.client = _InOrderClient(reconnection=False)
        self.client.on("task_update", self.events.append)

    def connect(self) -> SocketIOClient:
        self.client.connect(self.url, auth=self.auth, transports=["websocket"], wait_timeout=10)
        return self

    @property
    def ids(self) -> list[int]:
        return [e["id"] for e in self.events]

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.events) >= count, timeout, f"{count} Socket.IO events (have {len(self.events)})")
        return self.events

    def call(self, event: str, data: Any) -> Any:
        return self.client.call(event, data, timeout=10)

    def close(self) -> None:
        self.client.disconnect()


class RedisServer:
    """A redis-server of the test's own on a free port, which the test may stop and start."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "redis-server to answer")
        return self

    def _answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
