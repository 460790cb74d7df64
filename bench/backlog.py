"""A backlog of notifications and events: replay to one SSE client beside a database read, delivery by the worker
beside bare smtplib."""

from __future__ import annotations

import datetime as dt
import signal
import smtplib
import subprocess
import time
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ADMIN_SCOPES, PY, OurServer, Run, log, mint, node_tool, note_failure, wait_until
from bench.sink import Sink


def scenario(run: Run, results: dict[str, Any]) -> None:
    """One backlog of --backlog notifications and events."""
    try:
        results["backlog"] = backlog(run, run.args.backlog)
    except Exception as exc:  # noqa: BLE001 - keep the other measurements
        note_failure(results, "backlog (delivery, replay)", exc)
    run.save(results)


def bench_message(i: int, templates: Any = None, links: Any = None) -> Message:
    """The service's own task email (channels.build_email) for the i-th write of the backlog."""
    from tasknotify.delivery.channels import Delivery, build_email
    from tasknotify.delivery.preferences import UnsubscribeLinks
    from tasknotify.delivery.templates import EmailTemplates

    event = {"id": i, "type": "task.updated", "task_id": f"w-{i % 1000}", "occurred_at": "2026-11-29T03:00:00.000Z",
             "task": {"title": f"write {i}", "status": "open", "description": "",
                      "user_email": f"user{i % 100}@example.com"}}
    return build_email(Delivery(notification_id=i, channel="email", recipient=f"user{i % 100}@example.com",
                                attempt=1, event=event), "tasks@example.com",
                       templates or EmailTemplates(), links or UnsubscribeLinks("bench", "http://127.0.0.1:5000"))


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
        # With a digest for every user (--server-env DEFAULT_DIGEST_SECONDS=60), each user gets one email.
        digest_seconds = int(env.get("DEFAULT_DIGEST_SECONDS") or 0)
        expected = len({i % 100 for i in range(built["ok"])}) if digest_seconds else built["ok"]
        folding = Folding(database_url, built["ok"]) if digest_seconds else None
        flask = str(Path(PY).parent / "flask")
        started = time.time()
        worker = run.spawn([flask, "--app", "app", "worker"], run.name("worker"), env)
        try:
            wait_until(lambda: (folding is None or folding.check()) and sink.count >= expected
                       or worker.poll() is not None, run.args.delivery_timeout, "the worker to deliver the backlog",
                       0.2)
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
        if folding is not None:
            result["delivery"]["digest"] = folding.result(started, digest_seconds, last)
            log(f"  digests: {result['delivery']['digest']}")
        log(f"  worker delivered {delivered} in {ended - started:.1f}s")
        # the limit: bare smtplib over one connection
        sink.reset()
        from tasknotify.delivery.preferences import UnsubscribeLinks
        from tasknotify.delivery.templates import EmailTemplates

        templates, links = EmailTemplates(), UnsubscribeLinks("bench", "http://127.0.0.1:5000")
        messages = [bench_message(i, templates, links) for i in range(built["ok"])]
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as smtp:
            for message in messages:
                smtp.send_message(message)
        bare = time.perf_counter() - started
        result["smtplib"] = {"sent": len(messages), "seconds": round(bare, 3),
                             "per_second": round(len(messages) / bare, 1), "sink_count": sink.count}
        log(f"  bare smtplib: {len(messages)} in {bare:.1f}s")
    return result


class Folding:
    """With digests on: when the worker has held every event (folded into digests), read from the database."""

    def __init__(self, url: str, count: int) -> None:
        from sqlalchemy import create_engine

        from db import normalize_url

        self.engine = create_engine(normalize_url(url))
        self.count = count
        self.done_at: float | None = None

    def _scalar(self, query: str) -> Any:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text(query)).scalar()

    def check(self) -> bool:
        """Whether every event's email is held or digested (the time of the first yes is kept)."""
        if self.done_at is None and self._scalar("SELECT count(*) FROM notifications WHERE kind = 'event' "
                                                 "AND status IN ('held', 'digested')") >= self.count:
            self.done_at = time.time()
        return self.done_at is not None

    def result(self, started: float, digest_seconds: int, last_message: float) -> dict[str, Any]:
        from datetime import UTC

        digests = self._scalar("SELECT count(*) FROM notifications WHERE kind = 'digest'")
        # Each user's window closes digest_seconds after that user's first event.
        first = self._scalar("SELECT max(first) FROM (SELECT min(occurred_at) AS first FROM events "
                             "GROUP BY user_email) AS firsts")
        if isinstance(first, str):
            first = dt.datetime.fromisoformat(first)
        closed = first.replace(tzinfo=UTC).timestamp() + digest_seconds
        self.engine.dispose()
        fold = None if self.done_at is None else round(self.done_at - started, 2)
        return {"digest_seconds": digest_seconds, "events": self.count, "digests": digests,
                "seconds_to_hold_every_event": fold,
                "events_held_per_second": None if not fold else round(self.count / fold, 1),
                "seconds_from_last_window_close_to_last_digest": round(last_message - closed, 2)}


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
