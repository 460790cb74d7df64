"""Server-Sent Events against the real eventlet server over real sockets."""

from __future__ import annotations

import socket

from support import wait_for


def post(server, task_id: str, **fields):
    response = server.post("/update_task", {"task_id": task_id, "user_email": "test@example.com", **fields})
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def test_headers_retry_line_and_each_event_once_in_order(live_server):
    sse = live_server.sse("/task_updates")
    assert sse.status == 200
    assert sse.response_headers["Content-Type"].startswith("text/event-stream")
    assert sse.response_headers["Cache-Control"] == "no-cache"
    assert sse.response_headers["X-Accel-Buffering"] == "no"
    ids = [post(live_server, str(n % 3), title=f"update {n}") for n in range(12)]
    events = sse.wait_for_events(12)
    assert sse.retry is not None
    assert sse.ids == ids  # once each, in order
    assert events[0]["type"] == "task.created" and events[3]["type"] == "task.updated"
    assert events[4]["task"]["title"] == "update 4"
    sse.close()


def test_a_small_event_arrives_unbuffered(live_server):
    """eventlet holds streamed output back until 4 KiB gather unless told not to: a real socket shows it."""
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as sock:
        sock.sendall(f"GET /task_updates?access_token={live_server.token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"retry:" not in received:
            received += sock.recv(4096)  # times out (fails) if the server buffers
        event_id = post(live_server, "small")
        while f"id: {event_id}".encode() not in received:
            received += sock.recv(4096)
    assert len(received) < 4096


def test_resume_after_disconnect_has_no_gap_and_no_duplicate(live_server):
    first = live_server.sse("/task_updates")
    before = [post(live_server, "r", title=str(n)) for n in range(5)]
    first.wait_for_events(5)
    first.close()
    missed = [post(live_server, "r", title=f"missed {n}") for n in range(7)]
    resumed = live_server.sse("/task_updates", headers={"Last-Event-ID": str(before[-1])})
    resumed.wait_for_events(7)
    after = [post(live_server, "r", title=f"live {n}") for n in range(3)]
    resumed.wait_for_events(10)
    assert resumed.ids == missed + after
    by_query = live_server.sse(f"/task_updates?last_event_id={before[1]}")
    by_query.wait_for_events(len(before) - 2 + len(missed) + len(after))
    assert by_query.ids == before[2:] + missed + after
    resumed.close()
    by_query.close()


def test_resume_while_events_are_being_published(live_server):
    """Events committed during the replay are neither lost nor sent twice."""
    base = post(live_server, "busy")
    for n in range(300):
        post(live_server, "busy", title=str(n))
    import threading

    stop = threading.Event()
    posted: list[int] = []

    def keep_posting() -> None:
        while not stop.is_set() and len(posted) < 200:
            posted.append(post(live_server, "busy", title="during"))

    writer = threading.Thread(target=keep_posting)
    writer.start()
    wait_for(lambda: len(posted) >= 5)
    client = live_server.sse("/task_updates", headers={"Last-Event-ID": str(base)})
    wait_for(lambda: len(posted) >= 60, 30)
    stop.set()
    writer.join()
    last = posted[-1]
    wait_for(lambda: client.ids and client.ids[-1] == last, 20, "the last posted event")
    assert client.ids == list(range(base + 1, last + 1))
    client.close()


def test_task_id_filter(live_server):
    sse = live_server.sse("/task_updates?task_id=a&task_id=c")
    ids = {t: post(live_server, t) for t in "abcd"}
    sse.wait_for_events(2)
    post(live_server, "a", title="again")
    sse.wait_for_events(3)
    assert sse.ids[:2] == [ids["a"], ids["c"]]
    assert {e["task_id"] for e in sse.events} == {"a", "c"}
    sse.close()


def test_heartbeat_comments_arrive(start_server):
    server = start_server(SSE_HEARTBEAT_SECONDS="0.2")
    sse = server.sse("/task_updates")
    wait_for(lambda: sse.comments.count("heartbeat") >= 2, 10, "two heartbeats")
    sse.close()


def test_disconnected_clients_are_freed(start_server):
    server = start_server(SSE_HEARTBEAT_SECONDS="0.2")
    def open_streams() -> int:
        return server.get("/healthz").json()["streams"]["sse"]

    clients = [server.sse("/task_updates") for _ in range(5)]
    wait_for(lambda: open_streams() == 5)
    for client in clients:
        client.close()
    wait_for(lambda: open_streams() == 0, 10, "closed streams to be freed")
    probe = server.sse("/task_updates")
    event_id = post(server, "after")
    probe.wait_for_events(1)
    assert probe.ids == [event_id]
    probe.close()


def test_a_new_stream_says_where_it_starts_so_a_reconnect_misses_nothing(live_server):
    """Connected before any event came, a browser still resumes from the right place."""
    before = [post(live_server, "s") for _ in range(3)]
    quiet = live_server.sse()
    wait_for(lambda: quiet.last_event_id == before[-1], 10, "the starting id")
    assert quiet.ids == []
    quiet.close()
    missed = [post(live_server, "s") for _ in range(2)]
    resumed = live_server.sse(headers={"Last-Event-ID": str(quiet.last_event_id)})
    resumed.wait_for_events(2)
    assert resumed.ids == missed
    resumed.close()


BAD_EVENT_IDS = ["1_0", "+5", "-1", "1.5", "0x10", "1e3", "7 8", str(2**63), "\u0663", " 7 "]


def test_bad_event_ids_are_422_on_the_query(live_server):
    for value in BAD_EVENT_IDS:
        response = live_server.get("/task_updates", params={"last_event_id": value}, stream=True)
        assert response.status_code == 422, (value, response.status_code)
        error = response.json()["error"]
        assert error["code"] == "validation_failed" and error["details"][0]["field"] == "last_event_id", value
        assert "decimal" in error["message"]


def test_bad_event_ids_are_422_in_the_last_event_id_header(live_server):
    # Spaces around a header's value are not part of it (RFC 9110 5.5): " 7 " there is 7.
    for value in [v for v in BAD_EVENT_IDS if v.isascii() and v.strip() == v]:
        response = live_server.get("/task_updates", headers={"Last-Event-ID": value}, stream=True)
        assert response.status_code == 422, (value, response.status_code)
        error = response.json()["error"]
        assert error["code"] == "validation_failed" and error["details"][0]["field"] == "Last-Event-ID", value


def test_event_ids_with_leading_zeros_resume(live_server):
    first = [post(live_server, "z") for _ in range(3)]
    by_header = live_server.sse(headers={"Last-Event-ID": f"000{first[0]}"})
    by_query = live_server.sse(f"/task_updates?last_event_id=0{first[1]}")
    by_header.wait_for_events(2)
    by_query.wait_for_events(1)
    assert by_header.ids == first[1:] and by_query.ids == first[2:]
    by_header.close()
    by_query.close()


def test_dot_task_ids_are_422_in_the_filter(live_server):
    for value in (".", ".."):
        response = live_server.get("/task_updates", params={"task_id": value}, stream=True)
        assert response.status_code == 422, value
        assert response.json()["error"]["details"][0]["field"] == "task_id"


def test_stream_start_names_where_the_stream_starts_as_an_event_on_request(live_server):
    """?stream_start=1: the opening block is an event named stream_start, which EventSource shows to a page."""
    before = post(live_server, "s")

    def opening(query: str) -> str:
        with live_server.get(f"/task_updates?{query}", stream=True) as response:
            assert response.status_code == 200
            received = b""
            for chunk in response.raw.stream(None, decode_content=False):
                received += chunk
                if b"\n\n" in received:
                    return received.split(b"\n\n", 1)[0].decode()
        raise AssertionError("the stream ended before its opening block")

    def without_retry(block: str) -> list[str]:
        retry, *rest = block.splitlines()
        assert retry.startswith("retry: ") and 1000 <= int(retry.removeprefix("retry: ")) <= 1000 + 2000, retry
        return rest

    assert without_retry(opening("stream_start=1")) == [
        f"id: {before}", "event: stream_start", f'data: {{"last_event_id": {before}}}', ": connected"]
    assert without_retry(opening("stream_start=1&last_event_id=0")) == [
        "event: stream_start", 'data: {"last_event_id": 0}', ": connected"]
    assert "stream_start" not in opening("last_event_id=0")  # only when asked: onmessage clients see no change



def test_each_stream_gets_its_own_retry_delay_so_reconnecting_clients_spread_out(start_server):
    """After a restart each EventSource waits its stream's retry: SSE_RETRY_MS plus up to SSE_RETRY_SPREAD_MS."""
    server = start_server(SSE_RETRY_MS="1000", SSE_RETRY_SPREAD_MS="5000")
    delays = []
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"GET /task_updates?access_token={server.token} HTTP/1.0\r\nHost: localhost\r\n\r\n"
                         .encode())
            received = b""
            while b": connected" not in received:
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
        line = next(line for line in received.decode().splitlines() if line.startswith("retry: "))
        delays.append(int(line.removeprefix("retry: ")))
    assert all(1000 <= delay <= 6000 for delay in delays), delays
    assert len(set(delays)) > 1, f"every stream got the same delay: {delays}"

    steady = start_server(SSE_RETRY_MS="1500", SSE_RETRY_SPREAD_MS="0")
    with steady.get("/task_updates", stream=True) as response:
        first = next(response.iter_lines())
    assert first == b"retry: 1500"
