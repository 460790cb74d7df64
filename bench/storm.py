"""Reconnect storms (issue 18): every client connecting at the same moment, and a restart of the server under load.

connect at once: for each size of --storm (SSExSIO) and each server, the clients' processes load first, then all
start together, each opening all of its connections at once (load.js --parallel = its client count). The time is
load.js's own, from its start of connecting to its last connection made (or failed); a transport's time is the
longest of its processes', the total the longest of all.

restart: N SSE + N Socket.IO clients that reconnect as real ones do (load.js --resume 1) are connected and
receiving; the server is stopped (SIGTERM) and started again on the same port and database. Posts go on from the
moment it answers /healthz while the clients come back, and again once all are back. Each client must then hold
every event of the run exactly once and in order. The reference keeps no event log (its ids start again at 1 and
it ignores Last-Event-ID), so on it only the time to reconnect is measured.

profile (with --profile, on in full mode): py-spy on our server during an extra, unmeasured storm of Socket.IO
clients only (as many as the last --storm size has): storm-flame.svg, then storm-top.txt (self time) from a
second storm recorded as raw stacks.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    ADMIN_SCOPES,
    OURS,
    PY,
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
    split,
    wait_until,
)


def sizes(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        sse, _, sio = part.strip().partition("x")
        out.append((int(sse), int(sio or 0)))
    return out


def scenario(run: Run, results: dict[str, Any]) -> None:
    """Each --storm size on each server, then the restart at --storm-restart on each server."""
    args = run.args
    results["storm"] = {"connect": [], "restart": []}
    for sse, sio in sizes(args.storm):
        row: dict[str, Any] = {"sse_clients": sse, "sio_clients": sio}
        for kind in args.servers:
            try:
                row[kind] = connect_at_once(run, kind, sse, sio)
            except Exception as exc:  # noqa: BLE001 - keep the other measurements
                note_failure(results, f"storm {sse}+{sio} on {SERVER_NAMES[kind]}", exc)
        results["storm"]["connect"].append(row)
        run.save(results)
    for sse, sio in ([] if args.storm_restart == "none" else sizes(args.storm_restart)):
        for kind in args.servers:
            try:
                results["storm"]["restart"].append(restart(run, kind, sse, sio))
            except Exception as exc:  # noqa: BLE001
                note_failure(results, f"restart under {sse}+{sio} on {SERVER_NAMES[kind]}", exc)
            run.save(results)
    sio = sizes(args.storm)[-1][1]
    if args.profile and "ours" in args.servers and sio:
        try:
            results["storm"]["profile"] = profiled(run, sio)
        except Exception as exc:  # noqa: BLE001
            note_failure(results, "profiled Socket.IO storm", exc)
        run.save(results)


def tcp_counters() -> dict[str, int]:
    """The kernel's counts of connections its listen queues turned away (this network namespace, every socket)."""
    names, values = [], []
    for line in Path("/proc/net/netstat").read_text().splitlines():
        if line.startswith("TcpExt:"):
            (names if not names else values).extend(line.split()[1:])
    counts = dict(zip(names, (int(v) for v in values), strict=False))
    return {"listen_overflows": counts.get("ListenOverflows", 0), "syncookies_sent": counts.get("SyncookiesSent", 0)}


def start_readers(run: Run, url: str, label: str, kind: str, sse: int, sio: int, tag: str, token: str,
                  max_seconds: float, resume: bool = False) -> list[Readers]:
    """The clients' processes (at most --clients-per-process each), loaded, not yet connecting."""
    readers = []
    for transport, count in (("sse", sse), ("sio", sio)):
        for k, chunk in enumerate(split([{"user": "*", "token": token}] * count, run.args.clients_per_process)):
            if chunk:
                readers.append(Readers(run, transport, url, chunk, tag, run.name(f"{label}-{kind}-{transport}{k}"),
                                       max_seconds, parallel=len(chunk), wait_go=True, resume=resume))
    wait_until(lambda: all(r.loaded or r.proc.poll() is not None for r in readers), 60, "the clients to load", 0.05)
    return readers


def connect_at_once(run: Run, kind: str, sse: int, sio: int) -> dict[str, Any]:
    label = f"storm-{sse}+{sio}"
    log(f"{label} on {SERVER_NAMES[kind]}: {sse} SSE + {sio} Socket.IO connecting at once")
    server = make_server(run, kind, label)
    admin = mint("admin@example.com", ADMIN_SCOPES)
    readers: list[Readers] = []
    try:
        # a few connections of each transport first, so that first-use imports and caches are not the storm's
        warm = start_readers(run, server.url, f"{label}-warm", kind, 5, 5, "warm", admin, 120)
        for r in warm:
            r.go()
        wait_until(lambda: all(r.finished_connecting() for r in warm), 60, "the warm-up connections", 0.05)
        for r in warm:
            r.stop()
        time.sleep(1)
        readers = start_readers(run, server.url, label, kind, sse, sio, "storm", admin, 600 + (sse + sio) / 20)
        counters = tcp_counters()
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        for r in readers:
            r.go()
        wait_until(lambda: all(r.finished_connecting() for r in readers), 300 + (sse + sio) / 20,
                   "every client to connect", 0.02)
        wall = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - cpu_before
        # SYNs a full listen queue turned away: each costs its client a TCP retransmission timeout (1 s, 3 s ...)
        tcp = {k: v - counters[k] for k, v in tcp_counters().items()}
        time.sleep(1)
        server_counts = server.streams()
        result: dict[str, Any] = {"server": kind, "sse_clients": sse, "sio_clients": sio,
                                  "wall_seconds": round(wall, 3), "server_counts": server_counts, "tcp": tcp,
                                  "server_cpu_ms_per_connection": round(1000 * cpu / max(1, sse + sio), 3)}
        for transport in TRANSPORTS:
            mine = [r for r in readers if r.transport == transport]
            if not mine:
                continue
            failures: dict[str, int] = {}
            for r in mine:
                summary, _ = r.stop()
                for reason, n in summary["failures"].items():
                    failures[reason] = failures.get(reason, 0) + n
            assert all(r.ready for r in mine)
            result[transport] = {
                "clients": sum(r.count for r in mine), "connected": sum(r.ready[0] for r in mine if r.ready),
                "failed": sum(r.ready[1] for r in mine if r.ready), "failures": failures,
                "seconds": max((r.ready_seconds or 0.0) for r in mine),
            }
        result["seconds"] = max(result[t]["seconds"] for t in TRANSPORTS if t in result)
        result["failed"] = sum(result[t]["failed"] for t in TRANSPORTS if t in result)
        log(f"  all tried in {result['seconds']:.2f}s (seen here after {wall:.2f}s): "
            + ", ".join(f"{t} {result[t]['connected']}/{result[t]['clients']} in {result[t]['seconds']:.2f}s"
                        for t in TRANSPORTS if t in result)
            + f"; server CPU {1000 * cpu / max(1, sse + sio):.2f} ms per connection"
            + f"; server counts {server_counts}; {tcp}")
        return result
    finally:
        for r in readers:
            if r.proc.poll() is None:
                r.proc.kill()
        server.stop()


def restart(run: Run, kind: str, sse: int, sio: int) -> dict[str, Any]:
    """Clients connected and receiving; the server stopped and started again; the clients back, nothing lost."""
    label = f"restart-{sse}+{sio}"
    resumes = kind in OURS
    log(f"{label} on {SERVER_NAMES[kind]}: {sse} SSE + {sio} Socket.IO, then a restart"
        + ("" if resumes else " (reconnection time only: the reference has no resume)"))
    server = make_server(run, kind, label)
    admin = mint("admin@example.com", ADMIN_SCOPES)
    tag = "restart"
    rate, during_seconds = run.args.storm_rate, run.args.storm_post_seconds
    readers: list[Readers] = []
    try:
        readers = start_readers(run, server.url, label, kind, sse, sio, tag, admin,
                                900 + (sse + sio) / 10, resume=True)
        for r in readers:
            r.go()
        wait_until(lambda: all(r.finished_connecting() for r in readers), 300 + (sse + sio) / 20,
                   "every client to connect", 0.1)
        connected = sum(r.ready[0] for r in readers if r.ready)
        log(f"  {connected}/{sse + sio} connected; posting {rate:g}/s for 2 s")
        before = node_tool(run, run.name(f"{label}-{kind}-before"), "post", server.url, 180, token=admin,
                           rate=rate, seconds=2, tag=tag, users=0)
        expected_each = before["ok"]
        drain(readers, connected * expected_each, 60)
        counters = tcp_counters()
        stop_at = time.monotonic()
        server.stop()
        stopped = time.monotonic() - stop_at
        server.start()  # the same port, database and settings; returns when /healthz answers
        up_wall = time.time()
        up_at = time.monotonic()
        log(f"  stopped in {stopped:.2f}s, answering /healthz {up_at - stop_at:.2f}s after the stop")
        during: dict[str, Any] = {}
        poster = None
        if resumes:  # events while the clients come back
            def post_during() -> None:
                during.update(node_tool(run, run.name(f"{label}-{kind}-during"), "post", server.url,
                                        during_seconds + 300, token=admin, rate=rate, seconds=during_seconds,
                                        tag=tag, users=0))
            poster = threading.Thread(target=post_during, daemon=True)
            poster.start()
        try:
            wait_until(lambda: sum(r.back for r in readers) >= connected, 240 + (sse + sio) / 20,
                       "every client to come back", 0.2)
        except TimeoutError as exc:
            log(f"  {exc}: {sum(r.back for r in readers)}/{connected} back")
        seen_back = time.monotonic() - up_at
        tcp = {k: v - counters[k] for k, v in tcp_counters().items()}
        log(f"  listen queue: {tcp}")
        after: dict[str, Any] = {}
        if poster is not None:
            poster.join(during_seconds + 330)
            after = node_tool(run, run.name(f"{label}-{kind}-after"), "post", server.url, 180, token=admin,
                              rate=rate, seconds=2, tag=tag, users=0)
            expected_each += during.get("ok", 0) + after["ok"]
            drain(readers, connected * expected_each, run.args.drain_seconds)
        result: dict[str, Any] = {
            "server": kind, "sse_clients": sse, "sio_clients": sio, "connected_before": connected,
            "resume": resumes, "stop_seconds": round(stopped, 2), "down_seconds": round(up_at - stop_at, 2),
            "back_seen_seconds": round(seen_back, 2), "rate": rate, "tcp": tcp,
            "posts": {"before": before["ok"], "during": during.get("ok"), "after": after.get("ok"),
                      "statuses": [p["statuses"] for p in (before, during, after) if p]},
        }
        for transport in TRANSPORTS:
            mine = [r for r in readers if r.transport == transport]
            if not mine:
                continue
            clients = back = refused = 0
            gaps = dups = out_of_order = 0
            backs: list[float] = []
            attempts: dict[int, int] = {}  # connection attempts (the first included) -> clients
            failures: dict[str, int] = {}
            up_at_end = 0
            for r in mine:
                summary, _ = r.stop()
                up_at_end += summary.get("up_at_end", 0)
                for reason, n in summary["failures"].items():
                    failures[reason] = failures.get(reason, 0) + n
                for (_user, got, dup, was), (connects, connected_at, disorder, _down, refusals, tries) in zip(
                        summary["per_client"], summary["resume"], strict=True):
                    if not was:
                        continue
                    clients += 1
                    refused += refusals
                    attempts[tries] = attempts.get(tries, 0) + 1
                    if connects > 1 and connected_at is not None:
                        back += 1
                        backs.append(connected_at / 1000 - up_wall)
                    if resumes:
                        gaps += max(0, expected_each - got)
                        dups += dup
                        out_of_order += disorder
            result[transport] = {
                "clients": clients, "reconnected": back, "not_reconnected": clients - back,
                "connected_at_end": up_at_end, "failures": failures, "refusals": refused,
                "reconnect_seconds": round(max(backs), 2) if backs else None,
                "reconnect_median_seconds": round(float(np.median(backs)), 2) if backs else None,
                "reconnect_p90_seconds": round(float(np.percentile(backs, 90)), 2) if backs else None,
                "attempts": {str(k): attempts[k] for k in sorted(attempts)},
                "expected_each": expected_each if resumes else None,
                "gaps": gaps if resumes else None, "duplicates": dups if resumes else None,
                "out_of_order": out_of_order if resumes else None,
            }
            log(f"  {transport}: {back}/{clients} back, the last {result[transport]['reconnect_seconds']}s after "
                f"/healthz (median {result[transport]['reconnect_median_seconds']}s, p90 "
                f"{result[transport]['reconnect_p90_seconds']}s; clients by connection attempts "
                f"{result[transport]['attempts']})"
                + (f"; gaps {gaps}, duplicates {dups}, out of order {out_of_order} ({expected_each} events each)"
                   if resumes else ""))
        times = [result[t]["reconnect_seconds"] for t in TRANSPORTS if t in result
                 and result[t]["reconnect_seconds"] is not None]
        result["reconnect_seconds"] = max(times) if times else None
        return result
    finally:
        for r in readers:
            if r.proc.poll() is None:
                r.proc.kill()
        server.stop()


def profiled(run: Run, sio: int) -> dict[str, Any]:
    """py-spy on our server while sio Socket.IO clients connect at once: a flame graph, then raw stacks.

    --gil: only the thread holding the GIL is sampled, so the idle threads of eventlet's tpool do not fill the
    profile.
    """
    from bench.fanout import top_self

    log(f"profile of ours under a storm of {sio} Socket.IO clients (py-spy; not measured)")
    server = make_server(run, "ours", f"storm-profile-{sio}")
    admin = mint("admin@example.com", ADMIN_SCOPES)
    spy = str(Path(PY).parent / "py-spy")
    svg, raw = run.out / "storm-flame.svg", run.out / "storm-top-stacks.txt"
    seconds = []
    try:
        for what, out in (("flamegraph", svg), ("raw", raw)):
            readers = start_readers(run, server.url, f"storm-profile-{what}", "ours", 0, sio, "storm", admin, 600)
            with open(run.logs / "py-spy-storm.log", "ab") as spy_log:
                recorder = subprocess.Popen([spy, "record", "--gil", "--format", what, "-o", str(out), "--pid",
                                             str(server.pid)], stdout=spy_log, stderr=spy_log)
            try:
                time.sleep(1)  # py-spy attached
                for r in readers:
                    r.go()
                wait_until(lambda readers=readers: all(r.finished_connecting() for r in readers), 300,
                           "every client to connect", 0.05)
                seconds.append(max(r.ready_seconds or 0.0 for r in readers))
                time.sleep(1)
            finally:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
                try:
                    recorder.wait(60)
                except subprocess.TimeoutExpired:
                    recorder.kill()
                for r in readers:
                    r.stop()
            time.sleep(3)  # the disconnections handled before the next storm
    finally:
        server.stop()
    if raw.exists():
        (run.out / "storm-top.txt").write_text(top_self(raw))
    log(f"  {sio} Socket.IO clients connected in {', '.join(f'{x:.2f}s' for x in seconds)} under py-spy")
    return {"sio_clients": sio, "seconds_under_py_spy": seconds,
            "flame": svg.name if svg.exists() else None, "top": "storm-top.txt" if raw.exists() else None}
