"""Tokens, scopes, per-user isolation on every path, CORS, limits, idempotency."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from datetime import timedelta

import jwt
import pytest
import socketio
from sqlalchemy import func, select, update

from db import EventRow, IdempotencyKey, Notification, utcnow
from support import ROOT, SECRET, free_port, make_token, wait_for

WRITE_READ_STREAM = ("tasks:write", "tasks:read", "updates:read")
OTHER_SECRET = "another-secret-of-sufficient-length-for-hs256-and-hs512-as-well-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(make_app):
    return make_app(AUTH_DISABLED=False)


@pytest.fixture
def api(secured):
    return secured.test_client()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    assert response.is_json
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    return error


# -- tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "required"),
        ({"Authorization": "Bearer"}, "Bearer <token>"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer <token>"),
        ({"Authorization": "Bearer not.a.jwt"}, "invalid token"),
        (bearer(make_token(secret=OTHER_SECRET)), "invalid token"),
        (bearer(make_token(expires_in=-10)), "expired"),
        (bearer(jwt.encode({"sub": "a@example.com", "scope": "tasks:write"}, SECRET)), "invalid token"),  # no exp
        (bearer(jwt.encode({"sub": "a@example.com", "scope": "admin", "exp": 9999999999}, SECRET,
                           algorithm="HS512")), "invalid token"),
    ],
    ids=["missing", "empty", "basic", "malformed", "wrong-signature", "expired", "no-exp", "other-algorithm"],
)
def test_bad_tokens_are_401_json(api, headers, reason):
    for method, path in [("post", "/update_task"), ("get", "/tasks"), ("get", "/notifications"),
                         ("get", "/task_updates")]:
        kwargs = {"json": {"task_id": "1", "user_email": "a@example.com"}} if method == "post" else {}
        response = getattr(api, method)(path, headers=headers, **kwargs)
        error = assert_error(response, 401, "unauthorized")
        assert reason in error["message"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_accepted_before_is_refused_once_it_expires(api):
    """Verified tokens are remembered (tokens._verified); their expiry is still checked on every use."""
    token = jwt.encode({"sub": "a@example.com", "scope": "tasks:read", "exp": time.time() + 1.5}, SECRET)
    assert api.get("/tasks", headers=bearer(token)).status_code == 200
    wait_for(lambda: api.get("/tasks", headers=bearer(token)).status_code == 401, 5, "the token to expire")
    assert "expired" in assert_error(api.get("/tasks", headers=bearer(token)), 401, "unauthorized")["message"]


def test_tampered_token_is_refused(api):
    header, payload, signature = make_token("a@example.com", ("tasks:read",)).split(".")
    forged = jwt.utils.base64url_encode(b'{"sub":"a@example.com","scope":"admin","exp":9999999999}').decode()
    assert_error(api.get("/tasks", headers=bearer(f"{header}.{forged}.{signature}")), 401, "unauthorized")


def test_missing_scope_is_403(api):
    reader = bearer(make_token("a@example.com", ("tasks:read",)))
    writer = bearer(make_token("a@example.com", ("tasks:write",)))
    body = {"task_id": "1", "user_email": "a@example.com"}
    assert_error(api.post("/update_task", json=body, headers=reader), 403, "forbidden")
    assert api.post("/update_task", json=body, headers=writer).status_code == 200
    assert_error(api.get("/tasks", headers=writer), 403, "forbidden")
    assert_error(api.get("/task_updates", headers=reader), 403, "forbidden")
    assert api.get("/tasks", headers=reader).status_code == 200


def test_writers_write_only_their_own_tasks(api):
    alice = bearer(make_token("alice@example.com", WRITE_READ_STREAM))
    bob = bearer(make_token("bob@example.com", WRITE_READ_STREAM))
    assert api.post("/update_task", json={"task_id": "a1", "user_email": "alice@example.com"},
                    headers=alice).status_code == 200
    assert_error(api.post("/update_task", json={"task_id": "b1", "user_email": "alice@example.com"},
                          headers=bob), 403, "forbidden")
    assert_error(api.post("/update_task", json={"task_id": "a1", "user_email": "bob@example.com"},
                          headers=bob), 404, "not_found")
    assert_error(api.patch("/tasks/a1", json={"title": "mine now"}, headers=bob), 404, "not_found")
    assert_error(api.put("/tasks/a1", json={"user_email": "bob@example.com"}, headers=bob), 404, "not_found")
    assert_error(api.delete("/tasks/a1", headers=bob), 404, "not_found")
    assert_error(api.get("/tasks/a1", headers=bob), 404, "not_found")  # 404, not 403: no leak
    assert api.get("/tasks/a1", headers=alice).get_json()["title"] == ""


def test_token_cli_prints_only_a_token_and_the_secret_is_private(tmp_path):
    instance = tmp_path / "instance"
    env = {**os.environ, "INSTANCE_PATH": str(instance), "SECRET_KEY": "", "NOTIFY_WORKERS": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "token", "create", "--user", "a@example.com",
         "--scope", "tasks:read", "--scope", "updates:read", "--expires-in", "600"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    secret_file = instance / "secret_key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    claims = jwt.decode(lines[0], secret_file.read_text().strip(), algorithms=["HS256"])
    assert claims["sub"] == "a@example.com" and claims["scope"] == "tasks:read updates:read"
    assert 590 <= claims["exp"] - claims["iat"] <= 600
    refused = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "token", "create", "--user", "a@example.com",
         "--scope", "root"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode != 0 and "root" in refused.stderr


# -- CORS ----------------------------------------------------------------------------


def test_cors_preflight_from_an_allowed_and_a_refused_origin(api):
    allowed = api.options("/update_task", headers={"Origin": "http://localhost:4200",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "authorization,content-type"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:4200"
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    refused = api.options("/update_task", headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    plain = api.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in plain.headers
    assert "Access-Control-Allow-Origin" not in api.get("/healthz").headers


def test_socketio_handshake_from_a_refused_origin_fails(live_server):
    import websocket

    ws_url = f"ws://127.0.0.1:{live_server.port}/socket.io/?EIO=4&transport=websocket"
    # eventlet answers the handshake with 400; gevent-websocket upgrades first, so there the
    # refusal is a connection closed before engine.io's open packet. Either way: no session.
    try:
        refused = websocket.create_connection(ws_url, origin="http://evil.example", timeout=5)
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 400
    else:
        try:
            first = refused.recv()
        except (websocket.WebSocketConnectionClosedException, OSError):
            first = ""
        assert first == "", first  # closed, and no engine.io open packet
        refused.close()
    allowed = websocket.create_connection(ws_url, origin="http://localhost:4200", timeout=5)
    assert allowed.recv().startswith("0{")  # engine.io's open packet
    allowed.close()
    polling = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        polling.connect(live_server.url, headers={"Origin": "http://evil.example"},
                        auth={"token": live_server.token}, transports=["polling"], wait_timeout=5)
    welcome = socketio.Client(reconnection=False)
    welcome.connect(live_server.url, headers={"Origin": "http://127.0.0.1:4200"},
                    auth={"token": live_server.token}, transports=["polling"], wait_timeout=5)
    welcome.disconnect()


# -- isolation, end to end -------------------------------------------------------------


def test_two_users_never_see_each_other(live_server):
    tokens = {user: make_token(f"{user}@example.com", WRITE_READ_STREAM) for user in ("alice", "bob")}
    sse = {user: live_server.sse(token=token) for user, token in tokens.items()}
    sio = {user: live_server.socketio(token=token) for user, token in tokens.items()}
    # bob asks for alice's task by id on both transports: still nothing of hers
    nosy_sse = live_server.sse("/task_updates?task_id=alice-1", token=tokens["bob"])
    nosy_sio = live_server.socketio(token=tokens["bob"])
    assert nosy_sio.call("subscribe", {"task_id": "alice-1"})["ok"] is True
    admin_sse = live_server.sse()

    own: dict[str, list[int]] = {"alice": [], "bob": []}
    for n in range(6):
        for user in ("alice", "bob"):
            response = live_server.post("/update_task", {"task_id": f"{user}-{n % 2}",
                                                         "user_email": f"{user}@example.com"},
                                        token=tokens[user])
            assert response.status_code == 200
            own[user].append(response.json()["event_id"])
    for user in ("alice", "bob"):
        sse[user].wait_for_events(6)
        sio[user].wait_for_events(6)
    admin_sse.wait_for_events(12)
    for user in ("alice", "bob"):
        assert sse[user].ids == own[user], user
        assert sio[user].ids == own[user], user
        assert {e["task"]["user_email"] for e in sse[user].events} == {f"{user}@example.com"}
        tasks = live_server.get("/tasks", token=tokens[user]).json()["tasks"]
        assert {t["task_id"] for t in tasks} == {f"{user}-0", f"{user}-1"}
        notes = live_server.get("/notifications", token=tokens[user]).json()["notifications"]
        assert {n["user_email"] for n in notes} == {f"{user}@example.com"}
        other = "bob" if user == "alice" else "alice"
        assert live_server.get(f"/tasks/{other}-0", token=tokens[user]).status_code == 404
        assert live_server.get(f"/tasks/{other}-0/events", token=tokens[user]).json()["events"] == []
        assert live_server.get(f"/notifications/{notes[0]['id']}", token=tokens[other]).status_code == 404
        filtered = live_server.get(f"/tasks?user_email={other}@example.com", token=tokens[user]).json()
        assert filtered["tasks"] == []
    # replay after a disconnect: only one's own events, on both transports
    replay_sse = live_server.sse("/task_updates?last_event_id=0", token=tokens["bob"])
    replay_sio = live_server.socketio(auth={"last_event_id": 0}, token=tokens["bob"])
    replay_sse.wait_for_events(6)
    replay_sio.wait_for_events(6)
    assert replay_sse.ids == replay_sio.ids == own["bob"]
    last = live_server.post("/update_task", {"task_id": "bob-0", "user_email": "bob@example.com"},
                            token=tokens["bob"]).json()["event_id"]
    replay_sse.wait_for_events(7)
    sse["bob"].wait_for_events(7)
    assert nosy_sse.ids == [] and nosy_sio.ids == []
    assert sse["alice"].ids == own["alice"] and last not in sio["alice"].ids
    assert admin_sse.ids[:12] == sorted(own["alice"] + own["bob"])
    for client in [*sse.values(), nosy_sse, admin_sse, replay_sse]:
        client.close()
    for client in [*sio.values(), nosy_sio, replay_sio]:
        client.close()


def test_socketio_refuses_missing_bad_and_unscoped_tokens(live_server):
    cases = [({}, "unauthorized"), ({"token": "nope"}, "unauthorized"),
             ({"token": make_token(expires_in=-1)}, "unauthorized"),
             ({"token": make_token("a@example.com", ("tasks:read",))}, "forbidden")]
    for auth, code in cases:
        client = socketio.Client(reconnection=False)
        reasons: list = []
        client.on("connect_error", reasons.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(live_server.url, auth=auth, transports=["websocket"], wait_timeout=5)
        wait_for(lambda reasons=reasons: reasons)
        assert reasons[0]["data"] == {"code": code}, (auth, reasons)
        assert reasons[0]["message"]


def test_expired_tokens_end_socketio_and_sse_streams(live_server):
    short = make_token("a@example.com", ("updates:read",), expires_in=2)
    sio = live_server.socketio(token=short)
    sse = live_server.sse(token=short)
    wait_for(lambda: not sio.client.connected, 10, "the Socket.IO connection to close")
    wait_for(lambda: sse.closed.is_set(), 10, "the SSE stream to end")
    assert live_server.get("/task_updates", token=short, stream=True).status_code == 401


# -- limits ------------------------------------------------------------------------------


def test_write_rate_limit_per_token(start_server):
    server = start_server(RATE_LIMIT_WRITES="3 per minute")
    alice = make_token("alice@example.com", WRITE_READ_STREAM)
    bob = make_token("bob@example.com", WRITE_READ_STREAM)
    for n in range(3):
        accepted = server.post("/update_task", {"task_id": f"a{n}", "user_email": "alice@example.com"},
                               token=alice)
        assert accepted.status_code == 200
        assert (accepted.headers["X-RateLimit-Limit"], accepted.headers["X-RateLimit-Remaining"]) == ("3", str(2 - n))
    limited = server.post("/update_task", {"task_id": "a9", "user_email": "alice@example.com"}, token=alice)
    assert limited.status_code == 429
    assert limited.headers["X-RateLimit-Remaining"] == "0" and int(limited.headers["X-RateLimit-Reset"]) > time.time()
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert server.get("/tasks/a9", token=alice).status_code == 404  # nothing stored
    assert server.post("/update_task", {"task_id": "b0", "user_email": "bob@example.com"},
                       token=bob).status_code == 200
    assert server.get("/tasks", token=alice).status_code == 200  # reads are not limited by it


def test_service_tokens_have_their_own_write_limit_and_users_keep_theirs(start_server):
    """An admin token (a backend writing for every user) counts against RATE_LIMIT_SERVICE_WRITES."""
    server = start_server(RATE_LIMIT_WRITES="3 per minute", RATE_LIMIT_SERVICE_WRITES="8 per minute")
    alice = make_token("alice@example.com", WRITE_READ_STREAM)
    backend = make_token("backend@example.com", ("tasks:write", "admin"))
    for n in range(3):
        assert server.post("/update_task", {"task_id": f"u{n}", "user_email": "alice@example.com"},
                           token=alice).status_code == 200
    refused = server.post("/update_task", {"task_id": "u9", "user_email": "alice@example.com"}, token=alice)
    assert refused.status_code == 429 and refused.headers["X-RateLimit-Limit"] == "3"
    for n in range(8):
        accepted = server.post("/update_task", {"task_id": f"s{n}", "user_email": f"user{n}@example.com"},
                               token=backend)
        assert accepted.status_code == 200, (n, accepted.text)
        assert accepted.headers["X-RateLimit-Limit"] == "8"
    limited = server.post("/update_task", {"task_id": "s9", "user_email": "x@example.com"}, token=backend)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0


def test_stream_cap_per_user_counts_sse_and_socketio_together(start_server):
    server = start_server(MAX_STREAMS_PER_USER="2", SSE_HEARTBEAT_SECONDS="0.2")
    alice = make_token("alice@example.com", WRITE_READ_STREAM)
    first = server.sse(token=alice)
    second = server.socketio(token=alice)
    third = server.get("/task_updates", token=alice, stream=True)
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limited"
    refused = socketio.Client(reconnection=False)
    reasons: list = []
    refused.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(server.url, auth={"token": alice}, transports=["websocket"], wait_timeout=5)
    wait_for(lambda: reasons)
    assert reasons[0]["data"] == {"code": "rate_limited"}
    other = server.sse(token=make_token("bob@example.com", WRITE_READ_STREAM))
    assert other.status == 200
    first.close()  # the server notices at its next write (a heartbeat) and frees the place
    wait_for(lambda: server.get("/healthz").json()["streams"] == {"sse": 1, "socketio": 1}, 10)
    fourth = server.sse(token=alice)
    assert fourth.status == 200
    for client in (second, other, fourth):
        client.close()


def test_list_limits_are_bounded(client):
    for path in ("/tasks?limit=201", "/notifications?limit=1000", "/tasks/1/events?limit=5000"):
        assert_error(client.get(path), 422, "validation_failed")


# -- idempotency --------------------------------------------------------------------------


def rows(app) -> tuple[int, int]:
    with app.extensions["store"].read() as session:
        return (session.scalar(select(func.count()).select_from(EventRow)),
                session.scalar(select(func.count()).select_from(Notification)))


def test_idempotent_retry_returns_the_first_answer_and_writes_nothing_more(secured, api):
    token = bearer(make_token("a@example.com", WRITE_READ_STREAM))
    body = {"task_id": "i1", "user_email": "a@example.com", "title": "once"}
    first = api.post("/update_task", json=body, headers={**token, "Idempotency-Key": "k-1"})
    again = api.post("/update_task", json=body, headers={**token, "Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert rows(secured) == (1, 1)
    conflict = api.post("/update_task", json={**body, "title": "twice"}, headers={**token, "Idempotency-Key": "k-1"})
    assert_error(conflict, 409, "idempotency_conflict")
    assert rows(secured) == (1, 1)
    # PUT keeps its 201 on replay; PATCH is idempotent too; keys are per user
    put = {"user_email": "a@example.com", "title": "put"}
    created = api.put("/tasks/i2", json=put, headers={**token, "Idempotency-Key": "k-2"})
    replayed = api.put("/tasks/i2", json=put, headers={**token, "Idempotency-Key": "k-2"})
    assert created.status_code == replayed.status_code == 201 and created.get_json() == replayed.get_json()
    patched = [api.patch("/tasks/i2", json={"status": "done"}, headers={**token, "Idempotency-Key": "k-3"})
               for _ in range(2)]
    assert patched[0].get_json() == patched[1].get_json()
    assert rows(secured) == (3, 3)
    other = bearer(make_token("b@example.com", WRITE_READ_STREAM))
    theirs = api.post("/update_task", json={"task_id": "i3", "user_email": "b@example.com"},
                      headers={**other, "Idempotency-Key": "k-1"})
    assert theirs.status_code == 200 and "Idempotent-Replayed" not in theirs.headers
    assert_error(api.post("/update_task", json=body, headers={**token, "Idempotency-Key": "bad key"}),
                 422, "validation_failed")


def test_idempotency_keys_expire_after_24_hours(secured, api):
    token = bearer(make_token("a@example.com", WRITE_READ_STREAM))
    body = {"task_id": "e1", "user_email": "a@example.com"}
    api.post("/update_task", json=body, headers={**token, "Idempotency-Key": "old"})
    with secured.extensions["store"].write() as session:
        session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=24, seconds=1)))
    later = api.post("/update_task", json=body, headers={**token, "Idempotency-Key": "old"})
    assert later.status_code == 200 and "Idempotent-Replayed" not in later.headers
    assert rows(secured) == (2, 2)


def test_writes_go_through_when_the_rate_limit_storage_is_down(start_server):
    """A Redis that holds the counters and is down does not stop writes (the server logs it)."""
    server = start_server(RATE_LIMIT_WRITES="3 per minute", RATE_LIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0")
    token = make_token("alice@example.com", WRITE_READ_STREAM)
    for n in range(5):
        assert server.post("/update_task", {"task_id": f"r{n}", "user_email": "alice@example.com"},
                           token=token).status_code == 200
    assert "rate-limit storage unavailable" in server.log()


# -- email addresses are compared case-insensitively -------------------------------------


def test_token_cli_refuses_a_user_that_is_not_an_email_and_keeps_the_canonical_form(tmp_path):
    env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"), "SECRET_KEY": SECRET, "NOTIFY_WORKERS": "0",
           "SELF_CHECK_FAIL": ""}  # parts forced onto their fallbacks would say so on stderr too

    def create(user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flask", "--app", "app", "token", "create", "--user", user,
                               "--scope", "tasks:read"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)

    refused = create("not an email")
    assert refused.returncode in (1, 2) and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "not an email" in refused.stderr and "email address" in refused.stderr
    accepted = create("Alice@EXAMPLE.com")
    assert accepted.returncode == 0, accepted.stderr
    assert jwt.decode(accepted.stdout.strip(), SECRET, algorithms=["HS256"])["sub"] == "alice@example.com"


def test_one_user_whatever_the_case_of_the_address(api):
    lower = bearer(make_token("alice@example.com", WRITE_READ_STREAM))
    upper = bearer(make_token("ALICE@EXAMPLE.COM", WRITE_READ_STREAM))  # a token whose sub has another case
    bob = bearer(make_token("bob@example.com", WRITE_READ_STREAM))
    admin = bearer(make_token())
    # each token writes a task of the other's spelling, and the other reads and changes it
    written = api.post("/update_task", json={"task_id": "c1", "user_email": "ALICE@EXAMPLE.COM"}, headers=lower)
    assert written.status_code == 200, written.get_json()
    assert written.get_json()["task"]["user_email"] == "alice@example.com"
    assert api.put("/tasks/c2", json={"user_email": "alice@example.com"}, headers=upper).status_code == 201
    assert api.post("/update_task", json={"task_id": "c3", "user_email": "Alice@Example.Com"},
                    headers=upper).status_code == 200
    assert api.patch("/tasks/c1", json={"title": "by upper"}, headers=upper).status_code == 200
    assert api.patch("/tasks/c2", json={"user_email": "aLiCe@example.com", "title": "by lower"},
                     headers=lower).status_code == 200
    assert api.get("/tasks/c2", headers=upper).get_json()["title"] == "by lower"
    assert api.get("/tasks/c1", headers=lower).get_json()["title"] == "by upper"
    for token in (lower, upper):
        assert [t["task_id"] for t in api.get("/tasks", headers=token).get_json()["tasks"]] == ["c1", "c2", "c3"]
        assert [t["task_id"] for t in api.get("/tasks?user_email=ALICE@example.COM",
                                              headers=token).get_json()["tasks"]] == ["c1", "c2", "c3"]
        assert len(api.get("/tasks/c1/events", headers=token).get_json()["events"]) == 2
        notes = api.get("/notifications", headers=token).get_json()["notifications"]
        assert {n["user_email"] for n in notes} == {"alice@example.com"} and len(notes) == 5
        assert api.get(f"/notifications/{notes[0]['id']}", headers=token).status_code == 200
    assert [t["task_id"] for t in api.get("/tasks?user_email=ALICE@EXAMPLE.COM",
                                          headers=admin).get_json()["tasks"]] == ["c1", "c2", "c3"]
    # another user still cannot, in any spelling
    assert_error(api.post("/update_task", json={"task_id": "c1", "user_email": "BOB@example.com"}, headers=bob),
                 404, "not_found")
    assert_error(api.post("/update_task", json={"task_id": "c9", "user_email": "ALICE@example.com"}, headers=bob),
                 403, "forbidden")
    assert_error(api.get("/tasks/c1", headers=bob), 404, "not_found")
    assert_error(api.delete("/tasks/c1", headers=bob), 404, "not_found")
    assert api.get("/tasks?user_email=Alice@Example.com", headers=bob).get_json()["tasks"] == []
    assert api.get("/notifications", headers=bob).get_json()["notifications"] == []
    assert api.delete("/tasks/c3", headers=upper).status_code == 200


def test_streams_deliver_across_the_case_of_the_address(live_server):
    reader_lower = make_token("alice@example.com", WRITE_READ_STREAM)
    reader_upper = make_token("ALICE@Example.COM", WRITE_READ_STREAM)
    writer = make_token("Alice@example.com", WRITE_READ_STREAM)
    bob = make_token("bob@example.com", WRITE_READ_STREAM)
    sse = {"lower": live_server.sse(token=reader_lower), "upper": live_server.sse(token=reader_upper)}
    sio = {"lower": live_server.socketio(token=reader_lower), "upper": live_server.socketio(token=reader_upper)}
    subscribed = live_server.socketio(token=reader_upper)
    assert subscribed.call("subscribe", {"task_id": "s1"})["ok"] is True
    nosy_sse, nosy_sio = live_server.sse("/task_updates?task_id=s1", token=bob), live_server.socketio(token=bob)
    ids = []
    for task_id, address in (("s1", "ALICE@EXAMPLE.COM"), ("s2", "alice@example.com"), ("s1", "aLiCe@ExAmPlE.cOm")):
        answer = live_server.post("/update_task", {"task_id": task_id, "user_email": address}, token=writer)
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["event_id"])
    for client in (*sse.values(), *sio.values()):
        client.wait_for_events(3)
        assert client.ids == ids
        assert {e["task"]["user_email"] for e in client.events} == {"alice@example.com"}
    assert subscribed.wait_for_events(2) and subscribed.ids == [ids[0], ids[2]]
    replayed = live_server.socketio(auth={"last_event_id": 0}, token=reader_upper)
    replayed_sse = live_server.sse("/task_updates?last_event_id=0", token=reader_lower)
    assert replayed.wait_for_events(3) and replayed.ids == ids
    assert replayed_sse.wait_for_events(3) and replayed_sse.ids == ids
    assert nosy_sse.ids == [] and nosy_sio.ids == []
    for client in (*sse.values(), nosy_sse, replayed_sse):
        client.close()
    for client in (*sio.values(), subscribed, nosy_sio, replayed):
        client.close()
