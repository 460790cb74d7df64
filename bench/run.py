"""The benchmark suite: our server beside a minimal Node.js reference server, on this machine, in one run.

    bench/run                      # full sizes of issue 6 (about 12 minutes here)
    bench/run --quick              # small sizes, about four minutes
    bench/run --only fanout,memory # some scenarios
    bench/run --postgres --redis   # our server on PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379)
    bench/run --only storm --storm 5000x5000   # reconnect storms (issue 18): connecting at once, a restart

Everything is started here and stopped at the end: our server (`python app.py`, under eventlet and again
under gevent, see --servers; a free port, a temporary database), the reference server
(`node bench/reference/server.js`), an SMTP sink (aiosmtpd, own process, fast or 2 s per message) and the
load clients (Node.js processes, bench/clients/load.js). Results: bench/results/<timestamp>/ (results.json,
results.md, PNG plots, logs; not in git); the latest full run also goes to docs/benchmarks.md, its
results.json, plots and flame graph to docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import backlog, fanout, memory, storm, write
from bench.common import BENCH, SERVER_NAMES, Run, log
from bench.report import machine, markdown, report, source_tree

# in the order they run, whatever the order of --only
SCENARIOS: dict[str, Callable[[Run, dict[str, Any]], None]] = {
    "write": write.scenario, "fanout": fanout.to_all, "peruser": fanout.per_user, "memory": memory.scenario,
    "backlog": backlog.scenario, "storm": storm.scenario,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: about four minutes")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios among {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--servers", default=",".join(SERVER_NAMES),
                        help="servers of the fan-out, memory and storm runs, among ref, ours (eventlet) and "
                             "ours-gevent (ASYNC_MODE=gevent); default: all three")
    parser.add_argument("--fanout", help="fan-out to all runs, e.g. 500x500@20,5000x5000@5 (SSExSIO@posts per s)")
    parser.add_argument("--peruser", help="per-user run, e.g. 10000@200/1000 (clients@posts per s/users)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each fan-out pair (reference, ours) and the write path pair (fast sink, slow "
                             "sink) this many times, interleaved; the targets use the medians")
    parser.add_argument("--seconds", type=float, help="posting time of each fan-out run (default 20; quick 5)")
    parser.add_argument("--memory-sizes", help="idle connections per transport, e.g. 1000,5000")
    parser.add_argument("--write-seconds", type=float, help="length of each write-path measurement")
    parser.add_argument("--backlog", type=int, help="notifications in the delivery backlog and events replayed")
    parser.add_argument("--storm", help="reconnect storm sizes, SSExSIO clients all connecting at once on each "
                                        "server (default 1250x0,2500x0,5000x5000; quick 500x500)")
    parser.add_argument("--storm-restart", help="clients (SSExSIO) connected while the server restarts (default: "
                                                "the last --storm size; none: no restart)")
    parser.add_argument("--storm-rate", type=float, default=2.0,
                        help="posts per second before, during and after the restart")
    parser.add_argument("--storm-post-seconds", type=float,
                        help="posting time from the restarted server's first /healthz answer (default 10; quick 5)")
    parser.add_argument("--postgres", action="store_true", help="our server on PostgreSQL at 127.0.0.1:5432 "
                                                                "(a fresh database per server)")
    parser.add_argument("--redis", action="store_true", help="our server with REDIS_URL=redis://127.0.0.1:6379/0")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of our server for every run (repeatable), e.g. NOTIFY_WORKERS=0")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="py-spy flame graph of our server in an extra 500+500 fan-out (default: on in full mode)")
    parser.add_argument("--profile-server", default="ours", choices=[k for k in SERVER_NAMES if k != "ref"],
                        help="our server mode profiled by --profile (default ours, eventlet)")
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
    args.storm = args.storm or ("500x500" if q else "1250x0,2500x0,5000x5000")
    args.storm_restart = args.storm_restart or args.storm.split(",")[-1]
    args.storm_post_seconds = args.storm_post_seconds or (5.0 if q else 10.0)
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
    for s in args.servers:
        if s not in SERVER_NAMES:
            parser.error(f"unknown server {s} (expected among {', '.join(SERVER_NAMES)})")
    return args


def raise_open_file_limit() -> None:
    """The soft limit up to the hard one; the children (servers, clients) inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 25000:
        log(f"open-file limit {hard}: enough for each process here (servers and client processes hold at most"
            " 10 000 + a few each)")


def measure(run: Run, results: dict[str, Any]) -> None:
    """The chosen scenarios, in the order of SCENARIOS; SIGTERM or Ctrl-C ends it with what was measured."""
    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        for name, scenario in SCENARIOS.items():
            if name in run.args.only:
                scenario(run, results)
    except KeyboardInterrupt:
        results["notes"].append("interrupted before the end")
        log("interrupted")
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        out = Path(args.report)
        report(json.loads((out / "results.json").read_text()), out, bool(args.docs))
        print(markdown(json.loads((out / "results.json").read_text()), []))
        return 0
    raise_open_file_limit()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else BENCH / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    command = "bench/run " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command.strip(),
        "machine": machine(), "tree": source_tree(),
        "database": "PostgreSQL" if args.postgres else "SQLite (embedded default)",
        "broker": "Redis" if args.redis else "in-process (embedded default)", "notes": [],
    }
    measure(Run(out, args), results)
    results["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    report(results, out, args.docs)
    log(f"results in {out}")
    print(markdown(results, []))
    return 0
