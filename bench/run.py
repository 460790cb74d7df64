"""The benchmark suite: our server beside a minimal Node.js reference server, on this machine, in one run.

    bench/run                      # full sizes of issue 6 (about 12 minutes here)
    bench/run --quick              # small sizes, about four minutes
    bench/run --only fanout,memory # some scenarios
    bench/run --postgres --redis   # our server on PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379)

Everything is started here and stopped at the end: our server (`python app.py`, eventlet, a free
port, a temporary database), the reference server (`node bench/reference/server.js`), an SMTP
sink (aiosmtpd, own process, fast or 2 s per message) and the load clients (Node.js processes,
bench/clients/load.js). Results: bench/results/<timestamp>/ (results.json, results.md, PNG plots,
logs); the latest full run also goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.sink import Sink, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LOAD_JS = BENCH / "clients" / "load.js"
REFERENCE_JS = BENCH / "reference" / "server.js"
SECRET = "bench-secret-key-" + "0123456789abcdef" * 4
PY = sys.executable
NODE = shutil.which("node") or "node"
TRANSPORTS = ("sse", "sio")
TRANSPORT_NAMES = {"sse": "SSE", "sio": "Socket.IO"}
SERVER_NAMES = {"ours": "ours (Flask + eventlet)", "ref": "reference (Node.js)"}

# settings of the service that must not leak in from the caller's environment
SERVICE_SETTINGS = (
    "HOST PORT INSTANCE_PATH DATABASE_URL REDIS_URL SECRET_KEY SMTP_HOST SMTP_PORT SMTP_USERNAME SMTP_PASSWORD "
    "SMTP_STARTTLS MAIL_FROM WEBHOOK_URL WEBHOOK_SECRET CORS_ORIGINS NOTIFY_WORKERS NOTIFY_MAX_ATTEMPTS "
    "SSE_HEARTBEAT_SECONDS STREAM_QUEUE_SIZE MAX_CONNECTIONS AUTH_DISABLED RATE_LIMIT_WRITES RATE_LIMIT_STORAGE_URI "
    "MAX_STREAMS_PER_USER LOG_LEVEL ASYNC_MODE DIRECT_WRITES"
).split()


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
            "RATE_LIMIT_WRITES": "1000000 per minute", "MAX_STREAMS_PER_USER": "100000",
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
    return OurServer(run, run.name(f"ours-{stem}"), run.database_url(stem), extra).start()


# -- load clients -----------------------------------------------------------------------


class Readers:
    """One Node.js process holding many SSE or Socket.IO connections (bench/clients/load.js)."""

    def __init__(self, run: Run, transport: str, url: str, specs: list[dict[str, str]], tag: str, name: str,
                 max_seconds: float) -> None:
        self.transport = transport
        self.prefix = run.tmp / f"{name}-{tag}"
        clients_file = run.tmp / f"{name}-{tag}-clients.json"
        clients_file.write_text(json.dumps(specs))
        self.proc = run.spawn([NODE, str(LOAD_JS), transport, "--url", url, "--clients", str(clients_file),
                               "--tag", tag, "--out", str(self.prefix), "--max-seconds", str(int(max_seconds))],
                              name, stdin=True, stdout_pipe=True)
        self.ready: tuple[int, int] | None = None
        self.progress = 0
        self.done = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("ready "):
                ok, failed = line.split()[1:3]
                self.ready = (int(ok), int(failed))
            elif line.startswith("progress "):
                self.progress = int(line.split()[1])
            elif line == "done":
                self.done = True

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


# -- scenarios -----------------------------------------------------------------------------


def fanout(run: Run, kind: str, sse: int, sio: int, rate: float, seconds: float, users: int = 0,
           profile: bool = False) -> dict[str, Any]:
    """S SSE + K Socket.IO readers, all connected first, then rate posts/s for seconds.

    users=0: every reader sees every event (admin tokens). users=N: reader i belongs to user i % N and
    sees only that user's events; post j goes to user j % N.
    """
    label = f"{'peruser' if users else 'fanout'}-{sse}+{sio}"
    log(f"{label} on {SERVER_NAMES[kind]}: {sse} SSE + {sio} Socket.IO, {rate}/s for {seconds}s")
    server = make_server(run, kind, label)
    tag = secrets.token_hex(4)
    admin = mint("admin@example.com", ADMIN_SCOPES)
    user_tokens: dict[str, str] = {}

    def specs(count: int) -> list[dict[str, str]]:
        if not users:
            return [{"user": "*", "token": admin}] * count
        out = []
        for i in range(count):
            user = f"user{i % users}@example.com"
            if user not in user_tokens:
                user_tokens[user] = mint(user, READER_SCOPES)
            out.append({"user": user, "token": user_tokens[user]})
        return out

    per_proc = run.args.clients_per_process
    max_seconds = 300 + (sse + sio) / 20 + seconds
    readers: list[Readers] = []
    try:
        for transport, count in (("sse", sse), ("sio", sio)):
            for k, chunk in enumerate(split(specs(count), per_proc)):
                if chunk:
                    readers.append(Readers(run, transport, server.url, chunk, tag,
                                           run.name(f"{label}-{kind}-{transport}{k}"), max_seconds))
        connect_started = time.monotonic()
        wait_until(lambda: all(r.finished_connecting() for r in readers), 120 + (sse + sio) / 20,
                   "every reader to connect", 0.2)
        connect_seconds = time.monotonic() - connect_started
        connected = {t: sum(r.ready[0] for r in readers if r.transport == t and r.ready) for t in TRANSPORTS}
        time.sleep(2)
        server_counts = server.streams()
        log(f"  connected in {connect_seconds:.1f}s: {connected}; server counts {server_counts}; "
            f"RSS {server.rss_kb() / 1024:.0f} MB")
        profiler = None
        if profile:
            profiler = threading.Thread(target=profile_server, args=(run, server.pid), daemon=True)
            profiler.start()
        cpu_started = time.monotonic()
        cpu_before = {"server": cpu_seconds(server.pid), "clients": sum(cpu_seconds(r.proc.pid) for r in readers)}
        # warm-up: 2 s of posts at the same rate with another tag, which the readers do not count
        node_tool(run, run.name(f"{label}-{kind}-warmup"), "post", server.url, 180, token=admin, rate=rate,
                  seconds=2, tag="warmup", users=users)
        time.sleep(1)
        posts = node_tool(run, run.name(f"{label}-{kind}-post"), "post", server.url, seconds + 180,
                          token=admin, rate=rate, seconds=seconds, tag=tag, users=users)
        per_user = posts["per_user"]
        # expected deliveries (for the drain wait): each reader gets every ok post visible to it
        total_expected = 0
        sse_specs, sio_specs = specs(sse), specs(sio)
        for spec in sse_specs + sio_specs:
            total_expected += posts["ok"] if not users else per_user.get(spec["user"], 0)
        drain_started = time.monotonic()
        last, last_change = -1, time.monotonic()
        while time.monotonic() - drain_started < run.args.drain_seconds:
            got = sum(r.progress for r in readers)
            if got >= total_expected:
                break
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 15:
                break
            time.sleep(0.5)
        drain_seconds = time.monotonic() - drain_started
        if profiler is not None:
            profiler.join(120)
        rss = server.rss_kb()
        wall = time.monotonic() - cpu_started
        cpu = {"server_percent": round(100 * (cpu_seconds(server.pid) - cpu_before["server"]) / wall),
               "clients_percent": round(100 * (sum(cpu_seconds(r.proc.pid) for r in readers)
                                               - cpu_before["clients"]) / wall),
               "load_average": round(os.getloadavg()[0], 2)}
        log(f"  CPU from warm-up to drained: server {cpu['server_percent']} %, reader processes "
            f"{cpu['clients_percent']} % (of {os.cpu_count()} cores), load average {cpu['load_average']}")
        result: dict[str, Any] = {
            "server": kind, "sse_clients": sse, "sio_clients": sio, "rate": rate, "seconds": seconds, "users": users,
            "connect_seconds": round(connect_seconds, 1), "server_counts": server_counts,
            "posts": {k: posts[k] for k in ("planned", "ok", "statuses", "sending_seconds", "total_seconds",
                                            "post_ms")},
            "drain_seconds_after_last_post": round(drain_seconds, 1), "rss_mb_under_load": round(rss / 1024, 1),
            "cpu": cpu,
        }
        gathered: dict[str, list[Any]] = {t: [] for t in TRANSPORTS}
        for r in readers:
            gathered[r.transport].append(r.stop())
        for transport in TRANSPORTS:
            if not gathered[transport]:
                continue
            expected = received = dups = 0
            failures: dict[str, int] = {}
            connected_n = closed_early = 0
            for summary, _ in gathered[transport]:
                connected_n += summary["connected"]
                closed_early += summary["closed_early"]
                for reason, n in summary["failures"].items():
                    failures[reason] = failures.get(reason, 0) + n
                for user, got, dup, _connected in summary["per_client"]:
                    expected += posts["ok"] if not users else per_user.get(user, 0)
                    received += got
                    dups += dup
            lat = np.concatenate([latency for _, latency in gathered[transport]])
            result[transport] = {
                "clients": sse if transport == "sse" else sio, "connected": connected_n,
                "connect_failures": failures, "closed_early": closed_early,
                "expected": expected, "delivered": received, "duplicates": dups,
                "delivered_ratio": round(received / expected, 5) if expected else None,
                "latency_ms": percentiles(lat),
            }
            log(f"  {transport}: delivered {received}/{expected}, dups {dups}, "
                f"latency {result[transport]['latency_ms']}")
        log(f"  posts: {posts['ok']}/{posts['planned']} ok, POST p99 {posts['post_ms']['p99']} ms")
        return result
    finally:
        for r in readers:
            if r.proc.poll() is None:
                r.proc.kill()
        server.stop()


def profile_server(run: Run, pid: int) -> None:
    """py-spy while the fan-out runs: a flame graph (SVG) for 20 s, then raw stacks for the self-time table."""
    spy = str(Path(PY).parent / "py-spy")
    svg = run.out / "fanout-flame.svg"
    raw = run.out / "fanout-stacks.txt"
    duration = run.args.profile_seconds
    with open(run.logs / "py-spy.log", "ab") as out:
        subprocess.run([spy, "record", "-o", str(svg), "--pid", str(pid), "--duration", str(duration)],
                       stdout=out, stderr=out, timeout=duration + 60)
        subprocess.run([spy, "record", "--format", "raw", "-o", str(raw), "--pid", str(pid), "--duration",
                        str(max(5, duration // 2))], stdout=out, stderr=out, timeout=duration + 60)
    if raw.exists():
        (run.out / "fanout-top.txt").write_text(top_self(raw))


_LINE = re.compile(r":\d+\)$")


def top_self(raw: Path, limit: int = 30) -> str:
    """Self time per function from py-spy's raw (collapsed) stacks."""
    self_time: dict[str, int] = {}
    total_time: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]  # per function, not per line
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        for frame in set(frames):
            total_time[frame] = total_time.get(frame, 0) + count
    lines = [f"{total} samples", "", "self %  total %  function (file)"]
    for frame, count in sorted(self_time.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"{100 * count / total:6.1f} {100 * total_time[frame] / total:7.1f}  {frame}")
    lines += ["", "top inclusive", "total %  function"]
    for frame, count in sorted(total_time.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"{100 * count / total:7.1f}  {frame}")
    return "\n".join(lines) + "\n"


def memory(run: Run, kind: str, transport: str, sizes: list[int]) -> dict[str, Any]:
    """Server RSS with N idle connections of one transport, minus the RSS before the first."""
    log(f"memory on {SERVER_NAMES[kind]}: {transport} at {sizes}")
    server = make_server(run, kind, f"memory-{transport}")
    admin = mint("admin@example.com", ADMIN_SCOPES)
    readers: list[Readers] = []
    try:
        # warm up the paths a connection uses, so that imports and caches are not counted per connection
        warm = Readers(run, transport, server.url, [{"user": "*", "token": admin}] * 5, "warm",
                       run.name(f"memory-{kind}-{transport}-warm"), 120)
        wait_until(warm.finished_connecting, 60, "warm-up connections")
        node_tool(run, run.name(f"memory-{kind}-{transport}-warmpost"), "post", server.url, 60, token=admin,
                  rate=5, seconds=1, tag="warm", users=0)
        warm.stop()
        time.sleep(3)
        baseline = server.rss_kb()
        points = [{"connections": 0, "rss_kb": baseline}]
        opened = 0
        for size in sizes:
            readers.append(Readers(run, transport, server.url, [{"user": "*", "token": admin}] * (size - opened),
                                   "idle", run.name(f"memory-{kind}-{transport}-{size}"), 600 + size / 10))
            wait_until(lambda: all(r.finished_connecting() for r in readers), 120 + size / 20, "idle connections")
            opened = size
            connected = sum(r.ready[0] for r in readers if r.ready)
            time.sleep(5)
            rss = server.rss_kb()
            points.append({"connections": size, "connected": connected, "rss_kb": rss,
                           "per_connection_kb": round((rss - baseline) / max(connected, 1), 2)})
            log(f"  {connected} {transport}: RSS {rss / 1024:.1f} MB, "
                f"{(rss - baseline) / max(connected, 1):.1f} KB per connection")
        return {"server": kind, "transport": transport, "baseline_kb": baseline, "points": points}
    finally:
        for r in readers:
            r.stop()
        server.stop()


def write_path(run: Run, delay: float, seconds: float) -> dict[str, Any]:
    """POST /update_task beside GET /healthz at 50 concurrent connections, our server, SMTP sink of delay s."""
    log(f"write path, SMTP sink {delay:g} s per message, {seconds}s per measurement")
    with Sink(delay) as sink:
        server = make_server(run, "ours", f"write-{delay:g}s", sink.env)
        token = mint("writer@example.com", ADMIN_SCOPES)
        try:
            node_tool(run, run.name("write-warmup"), "http", server.url, 60, method="GET", path="/healthz",
                      token=token, concurrency=50, seconds=2)
            results = {}
            for method, path in (("GET", "/healthz"), ("POST", "/update_task")):
                cpu_before = cpu_seconds(server.pid)
                results[method] = node_tool(run, run.name(f"write-{method}-{delay:g}s"), "http", server.url,
                                            seconds + 120, method=method, path=path, token=token, concurrency=50,
                                            seconds=seconds)
                r = results[method]
                # The server's CPU per answer, its workers' deliveries included: what the ratio is made of.
                answered = sum(r["statuses"].values())
                r["server_cpu_ms"] = round(1000 * (cpu_seconds(server.pid) - cpu_before) / max(1, answered), 3)
                log(f"  {method} {path}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
                    f" ({r['statuses']}), server CPU {r['server_cpu_ms']} ms a request")
            results["smtp_delivered_meanwhile"] = sink.count
            return {"smtp_delay_seconds": delay, "healthz": results["GET"], "update_task": results["POST"],
                    "smtp_delivered_meanwhile": sink.count}
        finally:
            server.stop()


def bench_message(i: int) -> Message:
    """The service's own task email (channels.build_email) for the i-th write of the backlog."""
    from channels import Delivery, build_email

    event = {"id": i, "type": "task.updated", "task_id": f"w-{i % 1000}", "occurred_at": "2026-11-29T03:00:00.000Z",
             "task": {"title": f"write {i}", "status": "open", "description": "",
                      "user_email": f"user{i % 100}@example.com"}}
    return build_email(Delivery(notification_id=i, channel="email", recipient=f"user{i % 100}@example.com",
                                attempt=1, event=event), "tasks@example.com")


def backlog(run: Run, count: int) -> dict[str, Any]:
    """Delivery of a backlog of count notifications beside bare smtplib; replay of count events beside the DB."""
    log(f"backlog of {count}: build it (NOTIFY_WORKERS=0), replay it, deliver it")
    result: dict[str, Any] = {"count": count}
    with Sink(0.0) as sink:
        database_url = run.database_url("backlog")
        server = OurServer(run, run.name("ours-backlog"), database_url, {**sink.env, "NOTIFY_WORKERS": "0"}).start()
        token = mint("writer@example.com", ADMIN_SCOPES)
        try:
            built = node_tool(run, run.name("backlog-posts"), "http", server.url, 1800, method="POST",
                              path="/update_task", token=token, concurrency=50, count=count)
            log(f"  {built['ok']} posts in {built['seconds']:.1f}s ({built['rps']:.0f}/s)")
            result["build"] = {k: built[k] for k in ("ok", "seconds", "rps", "statuses")}
            # replay: one SSE client from Last-Event-ID 0 until it has every event; each replay is
            # followed by the same read straight from the database, so both see the machine alike
            replays, reads = [], []
            for k in range(5):
                r = node_tool(run, run.name(f"replay-{k}"), "replay", server.url, 600, token=token,
                              last_event_id=0, expect=built["ok"], max_seconds=300)
                replays.append(r)
                reads.append(db_read(database_url))
                log(f"  replay {k}: {r['received']} events in {r['seconds']:.3f}s ({r['why']}); "
                    f"database read {reads[-1]['sqlalchemy_seconds']:.3f}s")
            result["replay"] = {"runs": replays, "seconds": float(np.median([r["seconds"] for r in replays])),
                                "complete": all(r["received"] >= built["ok"] and r["dups"] == 0 for r in replays)}
        finally:
            server.stop()
        result["db_read"] = {"rows": reads[-1]["rows"], "runs": reads, **{
            key: round(float(np.median([read[key] for read in reads])), 4)
            for key in ("sqlalchemy_seconds", "driver_seconds")}}
        log(f"  database read (medians): {result['db_read']['sqlalchemy_seconds']}s, "
            f"bare driver {result['db_read']['driver_seconds']}s")
        # delivery by the worker process, from the full outbox
        sink.reset()
        env = OurServer(run, "worker", database_url, {**sink.env, "NOTIFY_WORKERS": "4"}).env()
        flask = str(Path(PY).parent / "flask")
        started = time.time()
        worker = run.spawn([flask, "--app", "app", "worker"], run.name("worker"), env)
        try:
            wait_until(lambda: sink.count >= built["ok"] or worker.poll() is not None, run.args.delivery_timeout,
                       "the worker to deliver the backlog", 0.2)
        except TimeoutError:
            log("  the worker did not finish in time")
        ended = time.time()
        first, last = sink.first_last
        delivered = sink.count
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        result["delivery"] = {
            "workers": 4, "delivered": delivered, "seconds_from_start": round(ended - started, 2),
            "seconds_first_to_last": round(last - first, 2) if delivered > 1 else None,
            "per_second": round(delivered / (ended - started), 1),
            "per_second_steady": round((delivered - 1) / (last - first), 1) if delivered > 1 and last > first else None,
        }
        log(f"  worker delivered {delivered} in {ended - started:.1f}s")
        # the limit: bare smtplib over one connection
        sink.reset()
        messages = [bench_message(i) for i in range(built["ok"])]
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as smtp:
            for message in messages:
                smtp.send_message(message)
        bare = time.perf_counter() - started
        result["smtplib"] = {"sent": len(messages), "seconds": round(bare, 3),
                             "per_second": round(len(messages) / bare, 1), "sink_count": sink.count}
        log(f"  bare smtplib: {len(messages)} in {bare:.1f}s")
    return result


def db_read(url: str) -> dict[str, Any]:
    """The same rows a replay sends, read once straight from the database: SQLAlchemy Core and the bare driver."""
    from sqlalchemy import create_engine, text

    from db import normalize_url  # the URL form the server uses (psycopg2 for PostgreSQL)

    query = "SELECT id, task_id, user_email, payload FROM events WHERE id > 0 ORDER BY id"
    engine = create_engine(normalize_url(url))
    with engine.connect():
        pass  # the engine's first connection inspects the database: not part of a read
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = len(conn.execute(text(query)).all())
    sqlalchemy_seconds = time.perf_counter() - started
    engine.dispose()
    started = time.perf_counter()
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute(query).fetchall()
        conn.close()
    else:
        import psycopg2

        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute(query)
            cur.fetchall()
        conn.close()
    return {"rows": rows, "sqlalchemy_seconds": round(sqlalchemy_seconds, 4),
            "driver_seconds": round(time.perf_counter() - started, 4)}


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "kernel": platform.release(),
                            "cores": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        total = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(total) / 1024 / 1024, 1)
    with contextlib.suppress(Exception):
        info["node"] = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()
    info["load_average_at_start"] = os.getloadavg()
    return info


def source_tree() -> dict[str, Any]:
    """The commit of the server code measured, and the files that differed from it (others may edit the tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.rstrip("\n")

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith(("bench/", "docs/benchmarks.md"))]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": changed}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b is not None and b > 0 else None  # b <= 0: noise, no ratio


def grouped(pairs: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Fan-out runs by size ("500+500"), then by server, in run order (several when repeated)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for pair in pairs:
        for kind, r in pair.items():
            if isinstance(r, dict) and "sse_clients" in r:
                out.setdefault(f"{r['sse_clients']}+{r['sio_clients']}", {}).setdefault(kind, []).append(r)
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 6 with its measured ratio and pass/fail (None: not measured)."""
    out = []

    def add(name: str, value: float | None, limit: float, at_most: bool, detail: str) -> None:
        passed = None if value is None else (value <= limit if at_most else value >= limit)
        out.append({"target": name, "measured": value, "limit": ("≤ " if at_most else "≥ ") + f"{limit:g}",
                    "pass": passed, "detail": detail})

    for key, limit in (("fanout", None), ("peruser", 2.0)):
        for size, runs in grouped(results.get(key, [])).items():
            ours, refs = runs.get("ours", []), runs.get("ref", [])
            if not ours:
                continue
            cap = limit if limit else (1.5 if ours[0]["sse_clients"] <= 500 else 2.0)
            what = "per user" if key == "peruser" else "to all"
            several = " (medians of the repeats)" if len(ours) > 1 or len(refs) > 1 else ""
            for t in TRANSPORTS:
                mine = [r[t] for r in ours if t in r]
                if not mine:
                    continue
                delivered, expected = sum(o["delivered"] for o in mine), sum(o["expected"] for o in mine)
                dups = sum(o["duplicates"] for o in mine)
                out.append({"target": f"fan-out {what} {size}, {TRANSPORT_NAMES[t]}: 100 % delivered, no duplicates",
                            "measured": f"{100 * delivered / max(expected, 1):.2f} %, {dups} dup",
                            "limit": "100 %, 0", "pass": delivered == expected and dups == 0,
                            "detail": f"{delivered}/{expected}"})
                theirs = [r[t] for r in refs if t in r]
                if theirs:
                    o99 = [o["latency_ms"]["p99"] for o in mine if o["latency_ms"]["p99"] is not None]
                    r99 = [x["latency_ms"]["p99"] for x in theirs if x["latency_ms"]["p99"] is not None]
                    if o99 and r99:
                        add(f"fan-out {what} {size}, {TRANSPORT_NAMES[t]}: p99 / reference p99{several}",
                            ratio(float(np.median(o99)), float(np.median(r99))), cap, True,
                            f"{' / '.join(f'{v:.0f}' for v in o99)} ms vs {' / '.join(f'{v:.0f}' for v in r99)} ms")
    mem: dict[tuple[str, str], dict[str, Any]] = {(m["server"], m["transport"]): m for m in results.get("memory", [])}
    for t in TRANSPORTS:
        ours, ref = mem.get(("ours", t)), mem.get(("ref", t))
        if not ours or not ref:
            continue
        for po, pr in zip(ours["points"][1:], ref["points"][1:], strict=False):
            add(f"idle memory per {TRANSPORT_NAMES[t]} connection at {po['connections']}: ours / reference",
                ratio(po["per_connection_kb"], pr["per_connection_kb"]), 1.5, True,
                f"{po['per_connection_kb']} KB vs {pr['per_connection_kb']} KB")
    # With --repeat, the write path runs fast, slow, fast, slow...: each target takes the median.
    writes: dict[float, list[dict[str, Any]]] = {}
    for w in results.get("write", []):
        writes.setdefault(w["smtp_delay_seconds"], []).append(w)
    fast, slow = writes.get(0.0, []), writes.get(2.0, [])
    for label, ws in (("fast", fast), ("2 s", slow)):
        if ws:
            ratios = [r for r in (ratio(w["update_task"]["rps"], w["healthz"]["rps"]) for w in ws) if r is not None]
            add(f"POST /update_task req/s / GET /healthz req/s ({label} SMTP sink)",
                float(np.median(ratios)) if ratios else None, 0.5, False,
                "; ".join(f"{w['update_task']['rps']:.0f} vs {w['healthz']['rps']:.0f} req/s" for w in ws))
    if fast and slow:
        fast_p99 = float(np.median([w["update_task"]["p99_ms"] for w in fast]))
        slow_p99 = float(np.median([w["update_task"]["p99_ms"] for w in slow]))
        runs = f" (medians of {len(fast)} runs each)" if len(fast) > 1 else ""
        add("POST /update_task p99 with 2 s SMTP sink / with fast sink", ratio(slow_p99, fast_p99), 1.2, True,
            f"{slow_p99:.1f} ms vs {fast_p99:.1f} ms{runs}")
    b = results.get("backlog")
    if b:
        d, s = b.get("delivery", {}), b.get("smtplib", {})
        if d and s:
            add("delivery rate / bare smtplib rate", ratio(d["per_second"], s["per_second"]), 0.5, False,
                f"{d['per_second']}/s (from worker start; {d['per_second_steady']}/s first to last message) "
                f"vs {s['per_second']}/s")
        if b.get("replay") and b.get("db_read"):
            add(f"replay of {b['count']} events / database read (SQLAlchemy)",
                ratio(b["replay"]["seconds"], b["db_read"]["sqlalchemy_seconds"]), 2.0, True,
                f"{b['replay']['seconds']:.3f} s vs {b['db_read']['sqlalchemy_seconds']:.3f} s "
                f"(bare driver {b['db_read']['driver_seconds']:.3f} s)")
    return out


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any], plots: list[str]) -> str:
    lines = []
    fans = results.get("fanout", []) + results.get("peruser", [])
    if fans:
        lines += ["### Fan-out", "",
                  "| run | server | transport | connected | delivered / expected | dup "
                  "| p50 ms | p90 ms | p99 ms | max ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for pair in fans:
            for kind in ("ref", "ours"):
                r = pair.get(kind)
                if not r:
                    continue
                what = (f"per user ({r['users']} users) " if r["users"] else "to all ") + \
                    f"{r['sse_clients']}+{r['sio_clients']}, {r['rate']:g}/s × {r['seconds']:g} s" + \
                    (f" (#{pair.get('repeat', 1)})" if max(x.get("repeat", 1) for x in fans) > 1 else "")
                for t in TRANSPORTS:
                    if t not in r:
                        continue
                    x, lat = r[t], r[t]["latency_ms"]
                    lines.append(f"| {what} | {SERVER_NAMES[kind]} | {TRANSPORT_NAMES[t]} | "
                                 f"{x['connected']}/{x['clients']}"
                                 f" | {x['delivered']}/{x['expected']} ({100 * (x['delivered_ratio'] or 0):.2f} %)"
                                 f" | {x['duplicates']} | {fmt(lat['p50'])} | {fmt(lat['p90'])} | {fmt(lat['p99'])}"
                                 f" | {fmt(lat['max'])} |")
        lines += ["", "POSTs during the fan-out runs (planned / answered 200, POST latency p99), and CPU use from",
                  "the warm-up until the last event arrived (100 % = one core):", ""]
        for pair in fans:
            for kind in ("ref", "ours"):
                r = pair.get(kind)
                if r:
                    p = r["posts"]
                    what = "per user" if r["users"] else "to all"
                    lines.append(f"- {SERVER_NAMES[kind]}, {what} {r['sse_clients']}+{r['sio_clients']}:"
                                 f" {p['ok']}/{p['planned']} in {p['sending_seconds']:.1f} s of sending, POST p99 "
                                 f"{fmt(p['post_ms']['p99'])} ms; connecting took {r['connect_seconds']} s; "
                                 f"RSS under load {r['rss_mb_under_load']} MB"
                                 + (f"; CPU server {r['cpu']['server_percent']} %, reader processes "
                                    f"{r['cpu']['clients_percent']} %, load average {r['cpu']['load_average']}"
                                    if r.get("cpu") else ""))
        lines.append("")
    if results.get("memory"):
        lines += ["### Idle memory", "", "| server | transport | connections | RSS MB | KB per connection |",
                  "| --- | --- | --- | --- | --- |"]
        for m in results["memory"]:
            for p in m["points"]:
                lines.append(f"| {SERVER_NAMES[m['server']]} | {TRANSPORT_NAMES[m['transport']]} | "
                             f"{p.get('connected', 0)} | {p['rss_kb'] / 1024:.1f} | "
                             f"{fmt(p.get('per_connection_kb'))} |")
        lines.append("")
    if results.get("write"):
        lines += ["### Write path (our server, 50 concurrent connections)", "",
                  "| SMTP sink | request | req/s | p50 ms | p99 ms | server CPU ms a request | answers |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for w in results["write"]:
            for key, label in (("healthz", "GET /healthz"), ("update_task", "POST /update_task")):
                x = w[key]
                lines.append(f"| {w['smtp_delay_seconds']:g} s | {label} | {x['rps']:.0f} | {fmt(x['p50_ms'])} | "
                             f"{fmt(x['p99_ms'])} | {fmt(x.get('server_cpu_ms'), 2)} | {x['statuses']} |")
        lines.append("")
    b = results.get("backlog")
    if b:
        d, s = b.get("delivery", {}), b.get("smtplib", {})
        lines += [f"### Backlog of {b['count']}", "", "| measurement | result |", "| --- | --- |",
                  f"| building it: POST /update_task, 50 connections, no workers | {b['build']['rps']:.0f} req/s |"]
        if d:
            lines.append(f"| delivery by `flask --app app worker` (4 threads) into the fast sink | {d['delivered']} in "
                         f"{d['seconds_from_start']} s: {d['per_second']}/s from worker start, "
                         f"{fmt(d['per_second_steady'])}/s first to last message |")
        if s:
            lines.append(f"| bare smtplib, one connection, same number of messages | {s['sent']} in {s['seconds']} s: "
                         f"{s['per_second']}/s |")
        if b.get("replay"):
            lines.append(f"| replay to one SSE client from Last-Event-ID 0 (median of {len(b['replay']['runs'])}) | "
                         f"{b['replay']['seconds']:.3f} s"
                         f" ({'complete' if b['replay']['complete'] else 'INCOMPLETE'}) |")
        if b.get("db_read"):
            reads = len(b["db_read"].get("runs", ())) or 3
            lines.append(f"| the same rows from the database (median of {reads}) | SQLAlchemy Core "
                         f"{b['db_read']['sqlalchemy_seconds']:.3f} s, "
                         f"bare driver {b['db_read']['driver_seconds']:.3f} s |")
        lines.append("")
    ts = targets(results)
    if ts:
        lines += ["### Targets of issue 6", "", "| target | measured | limit | result | detail |",
                  "| --- | --- | --- | --- | --- |"]
        for t in ts:
            verdict = "–" if t["pass"] is None else ("pass" if t["pass"] else "**FAIL**")
            lines.append(f"| {t['target']} | {fmt(t['measured'], 2)} | {t['limit']} | {verdict} | {t['detail']} |")
        lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fans = results.get("fanout", [])
    if fans:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, t in zip(axes, TRANSPORTS, strict=True):
            for kind, color in (("ref", "tab:green"), ("ours", "tab:red")):
                sizes = [g[kind] for g in grouped(fans).values() if g.get(kind) and t in g[kind][0]]
                sizes.sort(key=lambda runs: runs[0][t]["clients"])
                if not sizes:
                    continue
                xs = [runs[0][t]["clients"] for runs in sizes]

                def median(runs: list[dict[str, Any]], pct: str, t: str = t) -> float:
                    values = [r[t]["latency_ms"][pct] for r in runs if r[t]["latency_ms"][pct] is not None]
                    return float(np.median(values)) if values else np.nan

                for pct, style in (("p50", ":"), ("p90", "--"), ("p99", "-")):
                    ax.plot(xs, [median(runs, pct) for runs in sizes], style, marker="o", color=color,
                            label=f"{'reference' if kind == 'ref' else 'ours'} {pct}")
                if kind == "ours":
                    for x, runs in zip(xs, sizes, strict=True):
                        ax.annotate(f"{runs[0]['rate']:g} posts/s", (x, median(runs, "p99")),
                                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{TRANSPORT_NAMES[t]} fan-out to all")
            ax.set_xlabel(f"{TRANSPORT_NAMES[t]} subscribers (beside as many of the other transport)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("latency POST sent → event read (ms)")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        path = out / "latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    if results.get("memory"):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        colors = {("ref", "sse"): "tab:green", ("ref", "sio"): "tab:olive", ("ours", "sse"): "tab:red",
                  ("ours", "sio"): "tab:purple"}
        for m in results["memory"]:
            xs = [p.get("connected", 0) for p in m["points"]]
            ax.plot(xs, [p["rss_kb"] / 1024 for p in m["points"]], marker="o",
                    color=colors[(m["server"], m["transport"])],
                    label=f"{'reference' if m['server'] == 'ref' else 'ours'} {TRANSPORT_NAMES[m['transport']]}")
        ax.set_xlabel("idle connections")
        ax.set_ylabel("server RSS (MB)")
        ax.set_title("Server RSS against idle connections")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write_docs(results: dict[str, Any], out: Path, plots: list[Path], command: str) -> None:
    rel = [os.path.relpath(p, ROOT / "docs") for p in plots]
    m = results["machine"]
    flame = out / "fanout-flame.svg"
    top = out / "fanout-top.txt"
    text = [
        "# Benchmarks",
        "",
        "Written by `bench/run` from its latest full run; the raw figures, logs and plots of every run are in",
        f"[`{os.path.relpath(out, ROOT)}`](../{os.path.relpath(out, ROOT)}).",
        "Every figure stands beside a reference measured in the same run on the same machine, and the targets",
        "of issue 6 are ratios to it: the machine is shared and noisy, so absolute figures drift between runs.",
        "",
        "## How to run it",
        "",
        "```sh",
        "bin/setup            # or any .venv with requirements-dev.txt (matplotlib, numpy)",
        "bench/run            # full sizes (this page); writes bench/results/<timestamp>/ and docs/benchmarks.md",
        "bench/run --quick    # small sizes, about four minutes",
        "bench/run --only fanout,memory --postgres --redis   # chosen scenarios, our server on PostgreSQL + Redis",
        "bench/run --only peruser --servers ours --server-env NOTIFY_WORKERS=0   # one server, a setting of ours",
        "```",
        "",
        "`bench/run` installs the Node.js packages of `bench/reference` (socket.io) and `bench/clients`",
        "(socket.io-client) on first use and runs `.venv/bin/python -m bench`; `--help` lists every option.",
        "It starts and stops everything itself: our server (`python app.py`, eventlet, free port, fresh",
        "temporary SQLite database, or a fresh PostgreSQL database with `--postgres`; auth on, `SECRET_KEY` set",
        "so the suite mints its tokens, `RATE_LIMIT_WRITES=1000000 per minute`, `MAX_STREAMS_PER_USER=100000`,",
        "`MAX_CONNECTIONS=15000`, other settings at their defaults, so notifications go to the `log` channel",
        "except where an SMTP sink is named), the reference server (`bench/reference/server.js`: Node's `http` and",
        "socket.io 4.8, in memory, one encoding per event, the same wire contract and tokens), an aiosmtpd sink",
        "in its own process (fast, or 2 s per message), and the load clients as separate Node.js processes",
        "(`bench/clients/load.js`, at most 2 500 connections each).",
        "",
        "**Latency** of an event is the time a client read it minus the time its POST was sent: the poster",
        "writes its wall clock (ms) into the task title, the clients subtract it from theirs on the same machine.",
        "Posts are open loop (sent on schedule whatever the answers), so a server that answers slowly sees",
        "its latency grow rather than its load shrink. Delivered / expected counts only events of the run",
        "(their title carries the run's tag); a duplicate is an event id a client saw twice.",
        "",
        *(["What was changed to get to these figures, what each change bought, and what the profiles say stands",
           "between us and the targets still missed: [performance.md](performance.md).", ""]
          if (ROOT / "docs" / "performance.md").exists() else []),
        f"## Latest run: {results['started']}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores')} cores, {m.get('memory_gb')} GB, Linux {m.get('kernel')},",
        f"Python {m.get('python')}, Node.js {m.get('node')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. Database: {results['database']}; "
        f"broker: {results['broker']}.",
        *([f"Server code: commit `{results['tree']['commit']}`"
           + (f" with uncommitted changes in {', '.join(f'`{f}`' for f in results['tree']['uncommitted'])}"
              if results["tree"]["uncommitted"] else "") + "."] if results.get("tree") else []),
        "",
        markdown(results, rel),
    ]
    if flame.exists():
        text += ["## Profile of our server under the 500 + 500 fan-out", "",
                 f"py-spy flame graph, 20 s: [`{os.path.relpath(flame, ROOT)}`](../{os.path.relpath(flame, ROOT)})",
                 "(recorded in a separate, unmeasured run of the same load, so that sampling does not skew the",
                 "figures above)."]
        if top.exists():
            text += ["", "Top self time (from a second py-spy recording of raw stacks):", "", "```",
                     *top.read_text().splitlines()[:25], "```"]
        text.append("")
    text += ["## Reading the figures", "", *[f"- {n}" for n in READING], ""]
    if results.get("notes"):
        text += ["## Notes on this run", "", *[f"- {n}" for n in results["notes"]], ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(text))


READING = [
    "Two cores carry the server, the load clients and whatever else the machine runs (the load average is "
    "printed per run). The CPU line of each fan-out says how much of it the server and the reader processes "
    "took (100 % = one core); when the load average is well above 2, every process waits for a core and "
    "latencies of both servers grow together. Compare the ratios, not the absolute milliseconds.",
    "Posting is open loop: when a server cannot keep up, a backlog builds over the posting time and p99 "
    "approaches the posting time (ours at 5 000 + 5 000 and in the per-user run; the reference too when the "
    "machine is busy). Such a figure is a throughput limit, not a steady-state latency; the POST p99 beside it "
    "shows when the write itself was late.",
    "One pair of runs is not enough on a shared machine: the reference's p99 at 500 + 500 ranged from 26 ms to "
    "1.8 s between runs an hour apart, with the load average. `--repeat 3` interleaves the servers and the "
    "targets use the median p99 of each.",
    "Idle memory per connection is (RSS with N connections − RSS before the first) / N, after a warm-up of five "
    "connections and a few posts. Node's garbage collector makes the reference's figure noisy at small N.",
    "Delivery counts from the start of `flask --app app worker` (process start included) until the sink holds "
    "every message; the figure from the first to the last message is beside it. The bare smtplib loop sends "
    "the service's own messages (built beforehand by `channels.build_email`, outside the timing) over one "
    "connection to the same sink; runs before 2026-11-29 10:50 built them with EmailMessage, whose "
    "flattening is slower than the service's messages now are.",
    "Replay is the time from the request to the last of the events read by one Node.js SSE client, which reads "
    "them as EventSource does (the id from the `id:` line, the data left a string for the application; runs "
    "before 2026-11-29 07:40 also decoded each event's JSON, about half of the time then measured); "
    "the database read is `SELECT id, task_id, user_email, payload FROM events "
    "ORDER BY id` through SQLAlchemy Core (the target's denominator) and through the bare driver.",
    "The server measured is the working tree at the time of the run (commit and uncommitted files above).",
]


# -- main -----------------------------------------------------------------------------------

SCENARIOS = ("write", "fanout", "peruser", "memory", "backlog")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: about four minutes")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios among {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--servers", default="ref,ours", help="servers of the fan-out and memory runs (ref,ours)")
    parser.add_argument("--fanout", help="fan-out to all runs, e.g. 500x500@20,5000x5000@5 (SSExSIO@posts per s)")
    parser.add_argument("--peruser", help="per-user run, e.g. 10000@200/1000 (clients@posts per s/users)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each fan-out pair (reference, ours) and the write path pair (fast sink, slow "
                             "sink) this many times, interleaved; the targets use the medians")
    parser.add_argument("--seconds", type=float, help="posting time of each fan-out run (default 20; quick 5)")
    parser.add_argument("--memory-sizes", help="idle connections per transport, e.g. 1000,5000")
    parser.add_argument("--write-seconds", type=float, help="length of each write-path measurement")
    parser.add_argument("--backlog", type=int, help="notifications in the delivery backlog and events replayed")
    parser.add_argument("--postgres", action="store_true", help="our server on PostgreSQL at 127.0.0.1:5432 "
                                                                "(a fresh database per server)")
    parser.add_argument("--redis", action="store_true", help="our server with REDIS_URL=redis://127.0.0.1:6379/0")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of our server for every run (repeatable), e.g. NOTIFY_WORKERS=0")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="py-spy flame graph of our server in an extra 500+500 fan-out (default: on in full mode)")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument("--clients-per-process", type=int, default=2500)
    parser.add_argument("--drain-seconds", type=float, default=120,
                        help="longest wait for the last events after the last post")
    parser.add_argument("--delivery-timeout", type=float, default=900)
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                        help="write docs/benchmarks.md (default: on in full mode)")
    parser.add_argument("--out", help="results folder (default bench/results/<timestamp>)")
    parser.add_argument("--report", metavar="DIR", help="measure nothing: rewrite the table, plots (and with --docs,"
                                                        " docs/benchmarks.md) from DIR/results.json")
    args = parser.parse_args(argv)
    q = args.quick
    args.fanout = args.fanout or ("100x100@20,500x500@5" if q else "500x500@20,5000x5000@5")
    args.peruser = args.peruser or ("1000@50/100" if q else "10000@200/1000")
    args.seconds = args.seconds or (5.0 if q else 20.0)
    args.memory_sizes = [int(x) for x in (args.memory_sizes or ("200,1000" if q else "1000,5000")).split(",")]
    args.write_seconds = args.write_seconds or (5.0 if q else 15.0)
    args.backlog = args.backlog or (1000 if q else 10000)
    args.profile = (not q) if args.profile is None else args.profile
    args.docs = (not q) if args.docs is None else args.docs
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if any("=" not in setting for setting in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    args.server_env = dict(setting.split("=", 1) for setting in args.server_env)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in args.only:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s}")
    return args


def report(results: dict[str, Any], out: Path, docs: bool) -> None:
    results["targets"] = targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plots = plot(results, out)
    (out / "results.md").write_text(f"# Benchmark run {results['started']}\n\n`{results['command']}`\n\n"
                                    + markdown(results, [p.name for p in plots]))
    if docs:
        write_docs(results, out, plots, results["command"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        out = Path(args.report)
        report(json.loads((out / "results.json").read_text()), out, bool(args.docs))
        print(markdown(json.loads((out / "results.json").read_text()), []))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children (servers, clients) inherit it
    if hard < 25000:
        log(f"open-file limit {hard}: enough for each process here (servers and client processes hold at most"
            " 10 000 + a few each)")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else BENCH / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    command = "bench/run " + " ".join(sys.argv[1:] if argv is None else argv)
    run = Run(out, args)
    results: dict[str, Any] = {
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command.strip(),
        "machine": machine(), "tree": source_tree(),
        "database": "PostgreSQL" if args.postgres else "SQLite (embedded default)",
        "broker": "Redis" if args.redis else "in-process (embedded default)", "notes": [],
    }

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2))

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        if "write" in args.only:
            results["write"] = []
            for delay in [0.0, 2.0] * args.repeat:
                try:
                    results["write"].append(write_path(run, delay, args.write_seconds))
                except Exception as exc:  # noqa: BLE001 - keep the other measurements
                    results["notes"].append(f"write path with {delay:g} s sink failed: {exc}")
                    log(f"  FAILED: {exc}")
                save()
        if "fanout" in args.only:
            results["fanout"] = []
            for spec in args.fanout.split(","):
                clients, rate = spec.split("@")
                sse, sio = (int(x) for x in clients.split("x"))
                for repeat in range(args.repeat):
                    pair: dict[str, Any] = {"repeat": repeat + 1}
                    for kind in args.servers:
                        try:
                            pair[kind] = fanout(run, kind, sse, sio, float(rate), args.seconds)
                        except Exception as exc:  # noqa: BLE001
                            results["notes"].append(f"fan-out {sse}+{sio} on {SERVER_NAMES[kind]} failed: {exc}")
                            log(f"  FAILED: {exc}")
                    results["fanout"].append(pair)
                    save()
            if args.profile and "ours" in args.servers:
                try:
                    sse, sio = 500, 500
                    fanout(run, "ours", sse, sio, 20, args.profile_seconds * 1.5 + 15, profile=True)
                except Exception as exc:  # noqa: BLE001
                    results["notes"].append(f"profiled fan-out failed: {exc}")
        if "peruser" in args.only:
            clients_rate, users = args.peruser.split("/")
            clients, rate = clients_rate.split("@")
            results["peruser"] = []
            for repeat in range(args.repeat):
                pair = {"repeat": repeat + 1}
                for kind in args.servers:
                    try:
                        pair[kind] = fanout(run, kind, int(clients) // 2, int(clients) - int(clients) // 2,
                                            float(rate), args.seconds, users=int(users))
                    except Exception as exc:  # noqa: BLE001
                        results["notes"].append(f"per-user fan-out on {SERVER_NAMES[kind]} failed: {exc}")
                        log(f"  FAILED: {exc}")
                results["peruser"].append(pair)
                save()
        if "memory" in args.only:
            results["memory"] = []
            for transport in TRANSPORTS:
                for kind in args.servers:
                    try:
                        results["memory"].append(memory(run, kind, transport, args.memory_sizes))
                    except Exception as exc:  # noqa: BLE001
                        results["notes"].append(f"memory of {transport} on {SERVER_NAMES[kind]} failed: {exc}")
                        log(f"  FAILED: {exc}")
                    save()
        if "backlog" in args.only:
            try:
                results["backlog"] = backlog(run, args.backlog)
            except Exception as exc:  # noqa: BLE001
                results["notes"].append(f"backlog (delivery, replay) failed: {exc}")
                log(f"  FAILED: {exc}")
            save()
    except KeyboardInterrupt:
        results["notes"].append("interrupted before the end")
        log("interrupted")
    finally:
        run.close()
    results["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    report(results, out, args.docs)
    log(f"results in {out}")
    print(markdown(results, []))
    return 0
