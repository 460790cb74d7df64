"""Idle memory: server RSS with N idle connections of one transport, on each server."""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    ADMIN_SCOPES,
    SERVER_NAMES,
    TRANSPORTS,
    Readers,
    Run,
    log,
    make_server,
    mint,
    node_tool,
    note_failure,
    wait_until,
)


def scenario(run: Run, results: dict[str, Any]) -> None:
    """Each transport on each server, at every size of --memory-sizes."""
    results["memory"] = []
    for transport in TRANSPORTS:
        for kind in run.args.servers:
            try:
                results["memory"].append(memory(run, kind, transport, run.args.memory_sizes))
            except Exception as exc:  # noqa: BLE001 - keep the other measurements
                note_failure(results, f"memory of {transport} on {SERVER_NAMES[kind]}", exc)
            run.save(results)


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
