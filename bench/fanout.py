"""Fan-out: readers of both transports connected first, then posts at a steady rate; latency of every event."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    ADMIN_SCOPES,
    PY,
    READER_SCOPES,
    SERVER_NAMES,
    TRANSPORTS,
    Readers,
    Run,
    cpu_seconds,
    drain,
    log,
    make_server,
    mint,
    node_tool,
    note_failure,
    percentiles,
    split,
    wait_until,
)


def to_all(run: Run, results: dict[str, Any]) -> None:
    """Every size of --fanout on each server (interleaved when repeated), then the profiled run."""
    args = run.args
    results["fanout"] = []
    for spec in args.fanout.split(","):
        clients, rate = spec.split("@")
        sse, sio = (int(x) for x in clients.split("x"))
        for repeat in range(args.repeat):
            pair: dict[str, Any] = {"repeat": repeat + 1}
            for kind in args.servers:
                try:
                    pair[kind] = fanout(run, kind, sse, sio, float(rate), args.seconds)
                except Exception as exc:  # noqa: BLE001 - keep the other measurements
                    note_failure(results, f"fan-out {sse}+{sio} on {SERVER_NAMES[kind]}", exc)
            results["fanout"].append(pair)
            run.save(results)
    if args.profile and args.profile_server in args.servers:
        try:
            fanout(run, args.profile_server, 500, 500, 20, args.profile_seconds * 1.5 + 15, profile=True)
        except Exception as exc:  # noqa: BLE001
            note_failure(results, "profiled fan-out", exc)


def per_user(run: Run, results: dict[str, Any]) -> None:
    """The --peruser run on each server: half SSE, half Socket.IO, each reader seeing its user's events."""
    args = run.args
    clients_rate, users = args.peruser.split("/")
    clients, rate = clients_rate.split("@")
    results["peruser"] = []
    for repeat in range(args.repeat):
        pair: dict[str, Any] = {"repeat": repeat + 1}
        for kind in args.servers:
            try:
                pair[kind] = fanout(run, kind, int(clients) // 2, int(clients) - int(clients) // 2,
                                    float(rate), args.seconds, users=int(users))
            except Exception as exc:  # noqa: BLE001
                note_failure(results, f"per-user fan-out on {SERVER_NAMES[kind]}", exc)
        results["peruser"].append(pair)
        run.save(results)


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
        drain(readers, total_expected, run.args.drain_seconds)
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
