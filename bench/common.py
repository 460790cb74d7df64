"""What every scenario uses: the run (folder, processes, databases), the two servers, the load clients, helpers."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.sink import free_port
from tasknotify.config import SETTINGS  # the service's settings table (config.py imports nothing of the app)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LOAD_JS = BENCH / "clients" / "load.js"
REFERENCE_JS = BENCH / "reference" / "server.js"
SECRET = "bench-secret-key-" + "0123456789abcdef" * 4
PY = sys.executable
NODE = shutil.which("node") or "node"
TRANSPORTS = ("sse", "sio")
TRANSPORT_NAMES = {"sse": "SSE", "sio": "Socket.IO"}
# Our server in each of its modes (the settings that make it so), then every server the runs compare.
OURS = {"ours": {}, "ours-gevent": {"ASYNC_MODE": "gevent"}}
SERVER_NAMES = {"ref": "reference (Node.js)", "ours": "ours (Flask + eventlet)", "ours-gevent": "ours (Flask + gevent)"}

# The settings of our server must not leak in from the caller's environment: every name of the
# service's settings table, and ASYNC_MODE, which app.py reads before the table.
SERVICE_SETTINGS = (*SETTINGS, "ASYNC_MODE")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def mint(user: str, scopes: tuple[str, ...], hours: float = 6) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": user, "scope": " ".join(scopes), "iat": now, "exp": now + int(hours * 3600)},
                      SECRET, algorithm="HS256")


ADMIN_SCOPES = ("tasks:write", "tasks:read", "updates:read", "admin")
READER_SCOPES = ("tasks:read", "updates:read")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "max": round(float(values.max()), 2)}


def note_failure(results: dict[str, Any], what: str, exc: Exception) -> None:
    """Record a failed measurement in the run's notes; the other measurements go on."""
    results["notes"].append(f"{what} failed: {exc}")
    log(f"  FAILED: {exc}")


# -- processes ------------------------------------------------------------------------


class Run:
    """One benchmark run: its folder, its processes (all stopped at the end), its database."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.databases: list[str] = []
        self.counter = 0

    def name(self, stem: str) -> str:
        self.counter += 1
        return f"{self.counter:02d}-{stem}"

    def spawn(self, cmd: list[str], name: str, env: dict[str, str] | None = None, stdin: bool = False,
              stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        log_file = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or os.environ.copy(),
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if stdout_pipe else log_file, stderr=log_file)
        log_file.close()
        self.procs.append(proc)
        return proc

    def database_url(self, stem: str) -> str:
        if not self.args.postgres:
            folder = self.tmp / self.name(stem)
            folder.mkdir()
            return f"sqlite:///{folder}/tasks.db"
        import psycopg2

        name = f"bench_{os.getpid()}_{self.counter}_{secrets.token_hex(3)}"
        self.counter += 1
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        self.databases.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    def save(self, results: dict[str, Any]) -> None:
        """Write the results so far, so that an interrupted or failed run keeps what it measured."""
        (self.out / "results.json").write_text(json.dumps(results, indent=2))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.databases:
            import psycopg2

            conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in self.databases:
                    with contextlib.suppress(Exception):
                        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Server:
    kind = ""

    def __init__(self, run: Run, name: str) -> None:
        self.run = run
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> Server:
        cmd, env = self.command()
        self.proc = self.run.spawn(cmd, self.name, env)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.run.logs}")
            try:
                return requests.get(self.url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, f"{self.name} to answer /healthz", 0.1)
        return self

    def streams(self) -> dict[str, int]:
        return requests.get(self.url + "/healthz", timeout=30).json().get("streams", {})

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class OurServer(Server):
    kind = "ours"

    def __init__(self, run: Run, name: str, database_url: str, extra: dict[str, str] | None = None) -> None:
        super().__init__(run, name)
        self.database_url = database_url
        self.extra = extra or {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_SETTINGS}
        instance = self.run.tmp / f"instance-{self.name}"
        instance.mkdir(exist_ok=True)
        env.update({
            "HOST": "127.0.0.1", "PORT": str(self.port), "INSTANCE_PATH": str(instance),
            "DATABASE_URL": self.database_url, "SECRET_KEY": SECRET, "AUTH_DISABLED": "0",
            "RATE_LIMIT_WRITES": "1000000 per minute", "RATE_LIMIT_SERVICE_WRITES": "1000000 per minute",
            "MAX_STREAMS_PER_USER": "100000",
            "MAX_CONNECTIONS": "15000", "PYTHONUNBUFFERED": "1",
        })
        if self.run.args.redis:
            env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        env.update(self.run.args.server_env)
        env.update(self.extra)
        return env

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [PY, "app.py"], self.env()


class ReferenceServer(Server):
    kind = "ref"

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "SECRET_KEY": SECRET}
        return [NODE, str(REFERENCE_JS)], env


def make_server(run: Run, kind: str, stem: str, extra: dict[str, str] | None = None) -> Server:
    if kind == "ref":
        return ReferenceServer(run, run.name(f"ref-{stem}")).start()
    return OurServer(run, run.name(f"{kind}-{stem}"), run.database_url(stem), {**OURS[kind], **(extra or {})}).start()


# -- load clients -----------------------------------------------------------------------


class Readers:
    """One Node.js process holding many SSE or Socket.IO connections (bench/clients/load.js).

    parallel: connections opened at a time (load.js's default 50 when None). wait_go: the process loads, says
    so (`loaded`) and connects on go(), so that several processes start connecting together. resume: the
    clients reconnect as real ones do (load.js --resume 1); `up` and `back` then follow its progress lines.
    """

    def __init__(self, run: Run, transport: str, url: str, specs: list[dict[str, str]], tag: str, name: str,
                 max_seconds: float, parallel: int | None = None, wait_go: bool = False,
                 resume: bool = False) -> None:
        self.transport = transport
        self.count = len(specs)
        self.prefix = run.tmp / f"{name}-{tag}"
        clients_file = run.tmp / f"{name}-{tag}-clients.json"
        clients_file.write_text(json.dumps(specs))
        cmd = [NODE, str(LOAD_JS), transport, "--url", url, "--clients", str(clients_file),
               "--tag", tag, "--out", str(self.prefix), "--max-seconds", str(int(max_seconds))]
        if parallel is not None:
            cmd += ["--parallel", str(parallel)]
        if wait_go:
            cmd += ["--wait-go", "1"]
        if resume:
            cmd += ["--resume", "1"]
        self.proc = run.spawn(cmd, name, stdin=True, stdout_pipe=True)
        self.ready: tuple[int, int] | None = None
        self.ready_seconds: float | None = None  # from the start of connecting, as load.js measured it
        self.loaded = False
        self.progress = 0
        self.up = 0  # with resume: connected now
        self.back = 0  # with resume: connected now after a reconnection
        self.done = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("ready "):
                fields = line.split()
                if len(fields) > 3:  # load.js before the storm scenario printed no time
                    self.ready_seconds = float(fields[3])
                self.ready = (int(fields[1]), int(fields[2]))
            elif line.startswith("progress "):
                fields = line.split()
                if len(fields) > 3:
                    self.up, self.back = int(fields[2]), int(fields[3])
                self.progress = int(fields[1])
            elif line == "loaded":
                self.loaded = True
            elif line == "done":
                self.done = True

    def go(self) -> None:
        """Start connecting (with wait_go)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def finished_connecting(self) -> bool:
        if self.proc.poll() is not None and self.ready is None:
            raise RuntimeError(f"{self.transport} client process exited early ({self.proc.returncode})")
        return self.ready is not None

    def stop(self) -> tuple[dict[str, Any], np.ndarray]:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        summary = json.loads(Path(str(self.prefix) + ".json").read_text())
        latencies = np.fromfile(str(self.prefix) + ".bin", dtype=np.float32)
        return summary, latencies


def drain(readers: list[Readers], expected: int, timeout: float) -> None:
    """Wait until the readers have counted expected events in all, or nothing more came for 15 s."""
    started = time.monotonic()
    last, last_change = -1, time.monotonic()
    while time.monotonic() - started < timeout:
        got = sum(r.progress for r in readers)
        if got >= expected:
            return
        if got != last:
            last, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > 15:
            return
        time.sleep(0.5)


def node_tool(run: Run, name: str, mode: str, url: str, timeout: float, **options: Any) -> dict[str, Any]:
    """Run load.js in a mode that ends by itself; return what it wrote."""
    out = run.tmp / f"{name}.json"
    cmd = [NODE, str(LOAD_JS), mode, "--url", url, "--out", str(out)]
    for key, value in options.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    proc = run.spawn(cmd, name)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"{name} did not finish in {timeout:.0f}s") from None
    return json.loads(out.read_text())


def split(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]
