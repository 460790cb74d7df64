"""Scale-out on real PostgreSQL and Redis: several server and worker processes sharing them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine

from db import normalize_url
from support import ROOT, SECRET, free_port, postgres_database, wait_for

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new PostgreSQL database for this test (whatever TEST_DATABASE says), dropped afterwards."""
    with postgres_database(POSTGRES_URL) as url:
        yield url


class Worker:
    """`flask --app app worker` in a subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 2, *options: str) -> None:
        self.log_path = log_path
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "worker", "--concurrency", str(concurrency), *options],
            cwd=ROOT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=log,
        )
        log.close()
        wait_for(lambda: "notification workers running" in self.log(), 30, "the worker to start")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(env: dict[str, str], concurrency: int = 2, *options: str) -> Worker:
        worker = Worker(env, tmp_path / f"worker{len(workers)}.log", concurrency, *options)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.process.poll() is None:
            worker.kill9()


def shared_env(postgres_url: str, redis_url: str | None, tmp_path: Path, **extra: Any) -> dict[str, str]:
    env = {"DATABASE_URL": postgres_url, "SECRET_KEY": SECRET, "INSTANCE_PATH": str(tmp_path / "instance"),
           "NOTIFY_POLL_SECONDS": "0.5", "NOTIFY_BACKOFF_SECONDS": "0.05", "RATE_LIMIT_WRITES": "100000 per minute",
           "RATE_LIMIT_SERVICE_WRITES": "100000 per minute"}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return {**env, **{k: str(v) for k, v in extra.items()}}


def post(server, task_id: str, n: int = 0) -> int:
    response = server.post("/update_task", {"task_id": task_id, "user_email": "test@example.com", "title": str(n)})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def test_a_slow_query_does_not_freeze_the_server(start_server, postgres_url):
    """psycopg2 waits through select(), which eventlet and gevent make cooperative."""
    server = start_server(DATABASE_URL=postgres_url, NOTIFY_WORKERS="0")
    post(server, "locked")
    blocker = create_engine(normalize_url(postgres_url))
    with blocker.connect() as conn:
        transaction = conn.begin()
        conn.exec_driver_sql("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        with ThreadPoolExecutor(10) as pool:
            pending = [pool.submit(server.get, "/tasks") for _ in range(10)]

            def waiting() -> int:
                with blocker.connect() as watcher:  # a new transaction: pg_stat_activity is snapshotted per one
                    return watcher.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()").scalar()

            wait_for(lambda: waiting() == 10, 15, "10 queries waiting on the lock")
            # Ten requests are blocked inside PostgreSQL; the process still serves others.
            started = time.monotonic()
            assert server.get("/healthz").status_code == 200
            healthz_seconds = time.monotonic() - started
            assert not any(f.done() for f in pending)
            transaction.rollback()
            assert [f.result().status_code for f in pending] == [200] * 10
    blocker.dispose()
    print(f"/healthz answered in {healthz_seconds * 1000:.1f} ms while 10 requests waited in PostgreSQL")


def test_two_servers_and_two_workers_share_postgresql_and_redis(start_server, start_worker, smtp, postgres_url,
                                                               redis_server, tmp_path):
    env = shared_env(postgres_url, redis_server.url, tmp_path, NOTIFY_WORKERS="0", **smtp.env)
    server_a = start_server(**env)
    server_b = start_server(**env)
    workers = [start_worker(env) for _ in range(2)]
    sse_b = server_b.sse()
    sio_b = server_b.socketio()
    sse_a = server_a.sse()
    posted = [post(server_a, f"t{n % 7}", n) for n in range(40)]
    sse_b.wait_for_events(40, 20)
    sio_b.wait_for_events(40, 20)
    assert sse_b.ids == posted and sio_b.ids == posted  # every event of A, on B, once, in order
    # An SSE client that leaves A and resumes on B with Last-Event-ID misses nothing.
    sse_a.wait_for_events(10)
    seen_on_a = sse_a.ids[:10]
    sse_a.close()
    more = [post(server_a if n % 2 else server_b, "r", n) for n in range(20)]
    resumed = server_b.sse(headers={"Last-Event-ID": str(seen_on_a[-1])})
    resumed.wait_for_events(len(posted) - 10 + 20, 20)
    assert resumed.ids == posted[10:] + more
    expected = len(posted) + len(more)
    wait_for(lambda: smtp.handler.count() >= expected, 60, f"{expected} emails")
    ids = [m["Message-ID"] for m in smtp.handler.messages]
    assert len(ids) == len(set(ids)) == expected  # each notification sent exactly once
    print(f"two servers, two workers: {expected} events, {expected} notifications, "
          f"{expected - len(set(ids))} lost or duplicated")
    for client in (sse_b, resumed):
        client.close()
    sio_b.close()
    assert all(worker.stop() == 0 for worker in workers)


def test_500_notifications_across_three_workers_each_sent_once(start_server, start_worker, smtp, postgres_url,
                                                              tmp_path):
    env = shared_env(postgres_url, None, tmp_path, NOTIFY_WORKERS="0", **smtp.env)
    server = start_server(**env)
    smtp.handler.gate.clear()  # let the backlog build up, then release it to three competing workers
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda n: post(server, f"n{n}", n), range(500)))
    workers = [start_worker(env, concurrency=3) for _ in range(3)]
    smtp.handler.gate.set()
    wait_for(lambda: smtp.handler.count() >= 500, 120, "500 emails")
    ids = [m["Message-ID"] for m in smtp.handler.messages]
    assert len(ids) == len(set(ids)) == 500
    statuses = server.get("/notifications?status=sent&limit=200").json()
    assert len(statuses["notifications"]) == 200
    for worker in workers:
        assert worker.stop() == 0


def test_a_worker_killed_mid_batch_leaves_nothing_undelivered(start_server, start_worker, smtp, postgres_url,
                                                              tmp_path):
    env = shared_env(postgres_url, None, tmp_path, NOTIFY_WORKERS="0", NOTIFY_LEASE_SECONDS="2", **smtp.env)
    server = start_server(**env)
    for n in range(60):
        post(server, f"k{n}", n)
    smtp.handler.gate.clear()
    doomed = start_worker(env, concurrency=4)
    wait_for(lambda: smtp.handler.data_started >= 3, 20, "deliveries in flight")
    doomed.kill9()
    survivor = start_worker(env, concurrency=4)
    smtp.handler.gate.set()
    wait_for(lambda: len({m["Message-ID"] for m in smtp.handler.messages}) == 60, 60, "all 60 notifications")
    wait_for(lambda: not server.get("/notifications?status=pending").json()["notifications"]
             and not server.get("/notifications?status=retrying").json()["notifications"], 30)
    assert survivor.stop() == 0


def test_readyz_follows_redis_and_streams_recover(start_server, postgres_url, redis_server, tmp_path):
    env = shared_env(postgres_url, redis_server.url, tmp_path, NOTIFY_WORKERS="1")
    server = start_server(**env)
    assert server.get("/readyz").json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
    sse = server.sse()
    first = post(server, "a")
    sse.wait_for_events(1)
    redis_server.stop()
    wait_for(lambda: server.get("/readyz").status_code == 503, 15, "/readyz to turn 503")
    body = server.get("/readyz").json()
    assert body["error"]["code"] == "unavailable" and body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("unavailable")
    assert [d["component"] for d in body["error"]["details"]] == ["redis"]
    redis_server.start()
    wait_for(lambda: server.get("/readyz").status_code == 200, 30, "/readyz to turn 200 again")
    # The stream resumes (the client reconnects with Last-Event-ID if it was cut) and misses nothing.
    later = [post(server, "a", n) for n in range(3)]

    # The open stream either carries on, or was cut and resumes with Last-Event-ID: nothing is missed.
    wait_for(lambda: sse.closed.is_set() or sse.ids[-3:] == later, 20, "events after the outage")
    if sse.closed.is_set():
        resumed = server.sse(headers={"Last-Event-ID": str(sse.ids[-1])})
        resumed.wait_for_events(len([i for i in later if i > sse.ids[-1]]), 20)
        assert sse.ids + resumed.ids == [first, *later]
        resumed.close()
    else:
        assert sse.ids == [first, *later]
    sse.close()


def test_the_whole_flow_under_load_from_many_threads(start_server, postgres_url, redis_server, tmp_path):
    """Writers on both servers at once: every reader on either server sees one gapless, ordered stream."""
    env = shared_env(postgres_url, redis_server.url, tmp_path, NOTIFY_WORKERS="1")
    servers = [start_server(**env), start_server(**env)]
    readers = [servers[0].sse(), servers[1].sse(), servers[0].socketio(), servers[1].socketio()]
    written: list[int] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {servers[0].token}"
            for i in range(10):
                response = http.post(servers[(n + i) % 2].url + "/update_task", timeout=30,
                                     json={"task_id": f"c{n}", "user_email": "test@example.com"})
                assert response.status_code == 200
                with lock:
                    written.append(response.json()["event_id"])

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(write, range(20)))
    for reader in readers:
        reader.wait_for_events(200, 30)
        assert reader.ids == sorted(written)
    for reader in readers:
        reader.close()


def test_deployments_sharing_one_redis_keep_to_their_own_channel(start_server, redis_server, tmp_path):
    common = {"REDIS_URL": redis_server.url, "NOTIFY_WORKERS": "0"}
    one = start_server(REDIS_CHANNEL="one", INSTANCE_PATH=str(tmp_path / "one"),
                       DATABASE_URL=f"sqlite:///{tmp_path / 'one.db'}", **common)
    two = start_server(REDIS_CHANNEL="two", INSTANCE_PATH=str(tmp_path / "two"),
                       DATABASE_URL=f"sqlite:///{tmp_path / 'two.db'}", **common)
    watch_one, watch_two = one.sse(), two.sse()
    first = post(one, "mine")
    watch_one.wait_for_events(1)
    second = post(two, "theirs")
    watch_two.wait_for_events(1)
    assert watch_two.events[0]["task_id"] == "theirs" and watch_two.ids == [second]
    assert watch_one.ids == [first]
    watch_one.close()
    watch_two.close()


def test_a_worker_process_serves_its_own_metrics(start_server, start_worker, smtp, postgres_url, tmp_path):
    """`flask --app app worker --metrics-port P`: what its deliveries did, for Prometheus to scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    env = shared_env(postgres_url, None, tmp_path, NOTIFY_WORKERS="0", **smtp.env)
    server = start_server(**env)
    port = free_port()
    worker = start_worker(env, 1, "--metrics-port", str(port))
    for n in range(3):
        post(server, f"m{n}", n)
    wait_for(lambda: smtp.handler.count() == 3, 30, "three emails")

    def sent() -> float:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "notifications_total" and s.labels.get("outcome") == "sent")

    wait_for(lambda: sent() == 3, 10, "three deliveries in the worker's metrics")
    assert worker.stop() == 0


def test_an_emit_from_another_program_reaches_the_clients_of_every_process(start_server, redis_server, tmp_path):
    """docs/deployment.md: Socket.IO's own queue is on Redis, channel <REDIS_CHANNEL>-socketio."""
    from flask_socketio import SocketIO

    from support import SocketIOClient

    env = {"REDIS_URL": redis_server.url, "REDIS_CHANNEL": "deploy", "NOTIFY_WORKERS": "0"}
    servers = [start_server(**env), start_server(**env)]
    notices: list[list[dict[str, Any]]] = [[], []]
    clients = []
    for server, received in zip(servers, notices, strict=True):
        client = SocketIOClient(server.url, auth={"token": server.token})
        client.client.on("notice", received.append)
        clients.append(client.connect())
    outside = SocketIO(message_queue=redis_server.url, channel="deploy-socketio", async_mode="threading")

    def emitted_to_both() -> bool:
        if not all(notices):
            outside.emit("notice", {"from": "outside"})  # again until both processes listen
        return all(notices)

    wait_for(emitted_to_both, 20, "the outside emit on both processes")
    assert notices[0][0] == notices[1][0] == {"from": "outside"}
    for client in clients:
        client.close()
