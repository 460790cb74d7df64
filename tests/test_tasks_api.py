"""The REST API in process: every endpoint, and every bad input answered with JSON and nothing stored."""

from __future__ import annotations

import pytest

ORIGINAL = {"task_id": "123", "user_email": "test@example.com"}


def counts(app) -> tuple[int, int, int]:
    from sqlalchemy import func, select

    from db import EventRow, Notification, Task

    with app.extensions["store"].read() as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Task, EventRow, Notification))


def test_original_request_creates_task_event_and_notification(app, client):
    response = client.post("/update_task", json=ORIGINAL)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "task updated, notification will be sent asynchronously"
    assert body["task"]["task_id"] == "123"
    assert body["task"]["user_email"] == "test@example.com"
    assert body["task"]["status"] == "open"
    assert body["event_id"] == 1
    assert counts(app) == (1, 1, 1)


def test_update_changes_only_given_fields(client):
    client.post("/update_task", json={**ORIGINAL, "title": "Write report", "description": "quarterly"})
    body = client.post("/update_task", json={**ORIGINAL, "status": "done"}).get_json()
    assert body["task"]["title"] == "Write report"
    assert body["task"]["description"] == "quarterly"
    assert body["task"]["status"] == "done"
    assert body["event_id"] == 2
    events = client.get("/tasks/123/events").get_json()["events"]
    assert [e["type"] for e in events] == ["task.created", "task.updated"]
    assert [e["id"] for e in events] == [1, 2]
    assert events[1]["task"]["status"] == "done"


def test_task_resource_crud(client):
    created = client.put("/tasks/t-1", json={"user_email": "a@example.com", "title": "one"})
    assert created.status_code == 201
    assert created.get_json()["task"]["title"] == "one"
    replaced = client.put("/tasks/t-1", json={"user_email": "a@example.com", "status": "in_progress"})
    assert replaced.status_code == 200
    assert replaced.get_json()["task"]["title"] == ""  # PUT sets every field
    patched = client.patch("/tasks/t-1", json={"title": "renamed"})
    assert patched.status_code == 200
    assert patched.get_json()["task"] == {**replaced.get_json()["task"], "title": "renamed",
                                          "updated_at": patched.get_json()["task"]["updated_at"]}
    assert client.get("/tasks/t-1").get_json()["title"] == "renamed"
    deleted = client.delete("/tasks/t-1")
    assert deleted.status_code == 200
    assert deleted.get_json()["deleted"] == "t-1"
    assert client.get("/tasks/t-1").status_code == 404
    types = [e["type"] for e in client.get("/tasks/t-1/events").get_json()["events"]]
    assert types == ["task.created", "task.updated", "task.updated", "task.deleted"]


def test_list_tasks_filters_and_pages(client):
    for n in range(7):
        client.post("/update_task", json={"task_id": f"t{n}", "user_email": f"u{n % 2}@example.com",
                                          "status": "done" if n % 3 == 0 else "open"})
    page = client.get("/tasks?limit=3").get_json()
    seen = [t["task_id"] for t in page["tasks"]]
    while page["next_cursor"]:
        page = client.get(f"/tasks?limit=3&cursor={page['next_cursor']}").get_json()
        seen += [t["task_id"] for t in page["tasks"]]
    assert seen == [f"t{n}" for n in range(7)]
    mine = client.get("/tasks?user_email=u0@example.com").get_json()["tasks"]
    assert [t["task_id"] for t in mine] == ["t0", "t2", "t4", "t6"]
    done = client.get("/tasks?status=done").get_json()["tasks"]
    assert [t["task_id"] for t in done] == ["t0", "t3", "t6"]


def test_notifications_listing_and_detail(client):
    client.post("/update_task", json=ORIGINAL)
    listing = client.get("/notifications?task_id=123").get_json()
    assert len(listing["notifications"]) == 1
    note = listing["notifications"][0]
    assert note["status"] == "pending" and note["channel"] == "log" and note["attempts"] == 0
    assert client.get(f"/notifications/{note['id']}").get_json() == note
    assert client.get("/notifications?status=sent").get_json()["notifications"] == []
    assert client.get("/notifications/999").status_code == 404
    retry = client.post(f"/notifications/{note['id']}/retry")
    assert retry.status_code == 409  # only dead ones
    assert retry.get_json()["error"]["code"] == "conflict"


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok", "streams": {"sse": 0, "socketio": 0}}


def assert_error(response, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.data
    assert response.is_json, response.data
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert isinstance(error["details"], list)
    if field is not None:
        assert field in [d["field"] for d in error["details"]], error


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "field"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "malformed_json", None),
        ({"data": "task_id=1", "content_type": "application/x-www-form-urlencoded"}, 415,
         "unsupported_media_type", None),
        ({"data": "plain", "content_type": "text/plain"}, 415, "unsupported_media_type", None),
        ({"json": {"user_email": "test@example.com"}}, 422, "validation_failed", "task_id"),
        ({"json": {"task_id": "123"}}, 422, "validation_failed", "user_email"),
        ({"json": {"task_id": "", "user_email": "test@example.com"}}, 422, "validation_failed", "task_id"),
        ({"json": {"task_id": "a" * 65, "user_email": "test@example.com"}}, 422, "validation_failed", "task_id"),
        ({"json": {"task_id": "a/b", "user_email": "test@example.com"}}, 422, "validation_failed", "task_id"),
        ({"json": {"task_id": 123, "user_email": "test@example.com"}}, 422, "validation_failed", "task_id"),
        ({"json": {"task_id": "1", "user_email": "not-an-email"}}, 422, "validation_failed", "user_email"),
        ({"json": {"task_id": "1", "user_email": "a@b.com\r\nBcc: x@y.com"}}, 422, "validation_failed",
         "user_email"),
        ({"json": {**ORIGINAL, "title": "x" * 201}}, 422, "validation_failed", "title"),
        ({"json": {**ORIGINAL, "status": "finished"}}, 422, "validation_failed", "status"),
        ({"json": {**ORIGINAL, "priority": 1}}, 422, "validation_failed", "priority"),
        ({"json": ["not", "an", "object"]}, 422, "validation_failed", None),
        ({"json": {**ORIGINAL, "description": "x" * 70_000}}, 413, "payload_too_large", None),
    ],
)
def test_bad_update_is_refused_with_json_and_changes_nothing(app, client, kwargs, status, code, field):
    client.post("/update_task", json={**ORIGINAL, "title": "kept"})
    before = counts(app)
    assert_error(client.post("/update_task", **kwargs), status, code, field)
    assert counts(app) == before
    assert client.get("/tasks/123").get_json()["title"] == "kept"


def test_unknown_path_wrong_method_unknown_task(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    response = client.get("/update_task")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.get("/tasks/missing"), 404, "not_found")
    assert_error(client.patch("/tasks/missing", json={"title": "x"}), 404, "not_found")
    assert_error(client.delete("/tasks/missing"), 404, "not_found")
    assert_error(client.get("/tasks/bad%20id"), 422, "validation_failed", "task_id")
    assert_error(client.get("/tasks?limit=0"), 422, "validation_failed", "limit")
    assert_error(client.get("/tasks?limit=abc"), 422, "validation_failed", "limit")
    assert_error(client.get("/tasks?cursor=!!"), 422, "validation_failed", "cursor")
    assert_error(client.get("/tasks?status=nope"), 422, "validation_failed", "status")
    assert_error(client.get("/notifications?status=nope"), 422, "validation_failed", "status")
    assert_error(client.get("/task_updates?last_event_id=-3"), 422, "validation_failed", "last_event_id")
    assert_error(client.get("/task_updates?task_id=a%20b"), 422, "validation_failed", "task_id")
    assert_error(client.put("/tasks/x", json={"title": "no owner"}), 422, "validation_failed", "user_email")
    # ids beyond 64 bits: refused, never a database error
    huge = 2**63
    assert_error(client.get(f"/notifications/{huge}"), 404, "not_found")
    assert_error(client.post(f"/notifications/{huge}/retry"), 404, "not_found")
    assert_error(client.get(f"/tasks/x/events?after={huge}"), 422, "validation_failed", "after")
    assert_error(client.get(f"/task_updates?last_event_id={huge}"), 422, "validation_failed", "last_event_id")
    from db import encode_cursor

    assert_error(client.get(f"/tasks?cursor={encode_cursor(huge)}"), 422, "validation_failed", "cursor")
    assert_error(client.get(f"/notifications?cursor={encode_cursor(huge)}"), 422, "validation_failed", "cursor")


def test_rejected_put_and_patch_change_nothing(app, client):
    client.put("/tasks/k", json={"user_email": "a@example.com", "title": "kept"})
    before = counts(app)
    assert_error(client.put("/tasks/k", json={"user_email": "nope"}), 422, "validation_failed", "user_email")
    assert_error(client.patch("/tasks/k", json={"status": "bogus"}), 422, "validation_failed", "status")
    assert_error(client.patch("/tasks/k", data="x", content_type="text/plain"), 415, "unsupported_media_type")
    assert counts(app) == before
    assert client.get("/tasks/k").get_json()["title"] == "kept"


def test_every_write_view_is_declared_with_its_rate_limit(app):
    """A write view has @write_limited where it is declared; the one exception is named here, with its reason."""
    unlimited = {"preferences.unsubscribe"}  # mail providers post one-click unsubscribes: never a 429
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.methods & {"POST", "PUT", "PATCH", "DELETE"} and rule.endpoint not in unlimited:
            if not getattr(app.view_functions[rule.endpoint], "write_limited", False):
                missing.append(f"{rule.endpoint} ({rule.rule})")
    assert not missing, missing
