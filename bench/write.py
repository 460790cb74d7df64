"""Write path: POST /update_task beside GET /healthz on our server, with a fast and a slow SMTP sink."""

from __future__ import annotations

from typing import Any

from bench.common import ADMIN_SCOPES, Run, cpu_seconds, log, make_server, mint, node_tool, note_failure
from bench.sink import Sink


def scenario(run: Run, results: dict[str, Any]) -> None:
    """Fast sink, then 2 s sink, --repeat times (interleaved)."""
    results["write"] = []
    for delay in [0.0, 2.0] * run.args.repeat:
        try:
            results["write"].append(write_path(run, delay, run.args.write_seconds))
        except Exception as exc:  # noqa: BLE001 - keep the other measurements
            note_failure(results, f"write path with {delay:g} s sink", exc)
        run.save(results)


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
