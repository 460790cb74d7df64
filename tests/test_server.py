"""The eventlet server as users run it: concurrent writers, many idle streams."""

from __future__ import annotations

import resource
import selectors
import socket
from concurrent.futures import ThreadPoolExecutor

import requests

from support import wait_for


def test_fifty_concurrent_writers_all_succeed_with_distinct_ordered_events(live_server, smtp):
    sse = live_server.sse("/task_updates")

    def write(n: int) -> list[int]:
        ids = []
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {live_server.token}"
            for i in range(4):
                response = http.post(live_server.url + "/update_task", timeout=30,
                                     json={"task_id": f"w{n}", "user_email": "test@example.com", "title": str(i)})
                assert response.status_code == 200, response.text
                ids.append(response.json()["event_id"])
        return ids

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(write, range(50)))
    all_ids = sorted(i for ids in results for i in ids)
    assert all_ids == list(range(1, 201))
    sse.wait_for_events(200, 30)
    assert sse.ids == all_ids  # the stream sees them in id order
    wait_for(lambda: smtp.handler.count() == 200, 60, "200 emails")
    assert "database is locked" not in live_server.log()
    sse.close()


def test_more_than_1024_idle_streams_at_once(start_server):
    """eventlet accepts 1024 connections by default; the server raises that (and its open-file limit)."""
    wanted = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted + 500), hard))
    server = start_server(NOTIFY_WORKERS="1", MAX_STREAMS_PER_USER=str(wanted))
    request = f"GET /task_updates?access_token={server.token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    sockets = []
    try:
        for _ in range(wanted):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
            sockets.append(sock)
        greeted: set[int] = set()

        def all_greeted() -> bool:
            for key, _ in selector.select(timeout=0.5):
                key.data.extend(key.fileobj.recv(4096))
                if b"retry:" in key.data:
                    greeted.add(key.fileobj.fileno())
            return len(greeted) == wanted

        wait_for(all_greeted, 60, f"{wanted} SSE greetings")
        assert server.get("/healthz").json()["streams"]["sse"] == wanted
    finally:
        for sock in sockets:
            sock.close()
        selector.close()


def test_gunicorn_with_the_eventlet_worker_serves_streams(tmp_path, smtp):
    """The deployment the README documents: gunicorn, eventlet worker, wsgi:app."""
    import os
    import subprocess
    import sys

    from support import ROOT, SECRET, LiveServer, free_port, make_token

    port = free_port()
    env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"), "SECRET_KEY": SECRET, **smtp.env}
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115
    env.update(HOST="127.0.0.1", PORT=str(port))
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "wsgi:app"], cwd=ROOT, env=env, stdout=log,
                               stderr=log)
    try:
        server = LiveServer(env={}, log_path=tmp_path / "gunicorn.log", port=port, token=make_token())
        wait_for(lambda: _answers(server), 30, "gunicorn to answer")
        sse = server.sse()
        sio = server.socketio()
        event_id = server.post("/update_task", {"task_id": "g", "user_email": "test@example.com"}).json()["event_id"]
        sse.wait_for_events(1)
        sio.wait_for_events(1)
        assert sse.ids == sio.ids == [event_id]
        wait_for(lambda: smtp.handler.count() == 1, 10, "the email")
        sse.close()
        sio.close()
    finally:
        process.terminate()
        assert process.wait(30) == 0
        log.close()


def _answers(server) -> bool:
    try:
        return server.get("/healthz").status_code == 200
    except requests.ConnectionError:
        return False


def test_metrics_on_the_live_server(live_server, smtp):
    from prometheus_client.parser import text_string_to_metric_families

    sse = live_server.sse()
    live_server.post("/update_task", {"task_id": "m", "user_email": "test@example.com"})
    wait_for(lambda: smtp.handler.count() == 1)
    sse.wait_for_events(1)

    def samples() -> dict[tuple[str, tuple], float]:
        text = live_server.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    wait_for(lambda: samples().get(("notifications_total", (("channel", "email"), ("outcome", "sent")))) == 1)
    found = samples()
    assert found[("events_published_total", ())] == 1
    assert found[("stream_connections", (("transport", "sse"),))] == 1
    assert found[("outbox_notifications", (("status", "sent"),))] == 1
    assert found[("notification_delivery_seconds_count", (("channel", "email"),))] == 1
    assert found[("http_requests_total", (("method", "POST"), ("route", "/update_task"), ("status", "200")))] == 1
    sse.close()
