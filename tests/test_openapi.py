"""GET /openapi.json: a valid OpenAPI 3.1 document of every route, built from the models that validate requests."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from sqlalchemy.exc import OperationalError

from support import LiveServer, free_port, make_token
from tasknotify.api import openapi, schemas

SCOPED_ERRORS = {"401", "403"}
BODY_ERRORS = {"400", "413", "415", "422"}


def with_openapi(app: Flask) -> Flask:
    """The app, with GET /openapi.json (app.py registers it; an app built before that gets it here)."""
    if "openapi" not in app.blueprints:
        app.register_blueprint(openapi.bp)
    return app


@pytest.fixture
def spec(app: Flask) -> dict[str, Any]:
    return openapi.build_spec(with_openapi(app))


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method.upper()): op for path, item in spec["paths"].items() for method, op in item.items()}


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate(spec)  # raises with the first error
    json.dumps(spec)  # plain JSON all the way down


def test_every_route_of_the_app_is_documented_and_nothing_else(app: Flask, spec: dict[str, Any]) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/static", "/socket.io")):
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((openapi.openapi_path(rule.rule), method))
    assert routes, "the app has no routes?"
    documented = set(operations(spec))
    assert routes - documented == set(), "routes without an operation in openapi.OPERATIONS"
    assert documented - routes == set(), "operations of routes the app does not have"
    for required in [("/update_task", "POST"), ("/tasks/{task_id}", "PATCH"), ("/task_updates", "GET"),
                     ("/notifications/{notification_id}/retry", "POST"), ("/healthz", "GET"),
                     ("/openapi.json", "GET")]:
        assert required in documented


def test_request_bodies_and_query_parameters_are_the_models_of_schemas(spec: dict[str, Any]) -> None:
    ops = operations(spec)
    bodies = {("/update_task", "POST"): schemas.TaskUpdate, ("/tasks/{task_id}", "PUT"): schemas.TaskReplace,
              ("/tasks/{task_id}", "PATCH"): schemas.TaskPatch}
    for key, model in bodies.items():
        body = ops[key]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
        generated = model.model_json_schema(ref_template=openapi.REF_TEMPLATE)
        for name, definition in generated.pop("$defs", {}).items():
            assert spec["components"]["schemas"][name] == definition
        assert spec["components"]["schemas"][model.__name__] == generated
        assert generated["additionalProperties"] is False  # unknown fields are refused, and documented so
    # The operation table refers to the very classes that validate requests.
    assert openapi.OPERATIONS[("/update_task", "POST")].body is schemas.TaskUpdate
    assert openapi.OPERATIONS[("/tasks", "GET")].query is schemas.TaskListQuery
    assert openapi.OPERATIONS[("/tasks/<task_id>/events", "GET")].query is schemas.EventListQuery
    assert openapi.OPERATIONS[("/notifications", "GET")].query is schemas.NotificationListQuery

    queries = {("/tasks", "GET"): schemas.TaskListQuery, ("/tasks/{task_id}/events", "GET"): schemas.EventListQuery,
               ("/notifications", "GET"): schemas.NotificationListQuery}
    for key, model in queries.items():
        params = {p["name"]: p for p in ops[key]["parameters"] if p["in"] == "query"}
        assert set(params) == set(model.model_fields)
        for name, info in model.model_fields.items():
            assert params[name]["required"] is info.is_required()
    limit = {p["name"]: p for p in ops[("/tasks", "GET")]["parameters"]}["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 200, 50)
    status = {p["name"]: p for p in ops[("/tasks", "GET")]["parameters"]}["status"]["schema"]
    assert status == {"$ref": "#/components/schemas/TaskStatus"}
    assert spec["components"]["schemas"]["TaskStatus"]["enum"] == [s.value for s in schemas.TaskStatus]


def test_auth_is_global_with_open_health_and_document(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer",
                                     "bearerFormat": "JWT"}
    assert spec["security"] == [{"bearerAuth": []}]
    ops = operations(spec)
    open_ops = {key for key, op in ops.items() if op.get("security") == []}
    assert open_ops == {key for key in ops if key[0] in ("/healthz", "/readyz", "/openapi.json", "/metrics", "/",
                                                         "/unsubscribe")}
    any_token = {key for key, op in ops.items() if op.get("security") == [{"bearerAuth": []}]}
    assert any_token == {("/preferences", "GET"), ("/preferences", "PUT")}
    scopes = {"POST": "tasks:write", "PUT": "tasks:write", "PATCH": "tasks:write", "DELETE": "tasks:write",
              "GET": "tasks:read"}
    for key, op in ops.items():
        if key in open_ops:
            assert "Open" in op["description"]
            continue
        if key in any_token:
            assert "Requires a valid token, of any scope" in op["description"]
            assert SCOPED_ERRORS <= set(op["responses"]), key
            continue
        scope = "updates:read" if key[0] == "/task_updates" else scopes[key[1]]
        assert f"`{scope}`" in op["description"], key
        assert {"bearerAuth": [scope]} in op["security"], key
        assert SCOPED_ERRORS <= set(op["responses"]), key
    assert {"accessToken": ["updates:read"]} in ops[("/task_updates", "GET")]["security"]


def test_error_responses_share_the_error_shape(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    body = spec["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"code", "message", "details"}
    for response in spec["components"]["responses"].values():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "Retry-After" in spec["components"]["responses"]["RateLimited"]["headers"]
    for key, op in operations(spec).items():
        codes = set(op["responses"])
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            assert BODY_ERRORS | {"429"} <= codes, key
        if any(p["name"] == "Idempotency-Key" for p in op.get("parameters", ())):
            assert "409" in codes, key
        if key[1] in ("POST", "PUT", "PATCH", "DELETE") and op["security"]:  # writes that take a token
            assert "429" in codes, key
        if "{" in key[0]:
            assert "404" in codes, key
    sse = operations(spec)[("/task_updates", "GET")]
    assert list(sse["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {"422", "429"} <= set(sse["responses"])


def test_the_document_is_served_without_a_token(make_app: Callable[..., Flask]) -> None:
    app = with_openapi(make_app(AUTH_DISABLED=False))
    client = app.test_client()
    assert client.get("/tasks").status_code == 401  # auth is on
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == json.loads(json.dumps(openapi.build_spec(app)))


# -- the responses the server really gives match the document ------------------------------------


class Conformance:
    """Checks a response against the document: status documented, media type documented, body valid."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.checked: set[tuple[str, str, str]] = set()

    def check(self, path: str, method: str, response: Any) -> Any:
        op = self.spec["paths"][path][method.lower()]
        status = str(response.status_code)
        assert status in op["responses"], f"{method} {path} answered an undocumented {status}"
        documented = op["responses"][status]
        if "$ref" in documented:
            documented = self.spec["components"]["responses"][documented["$ref"].rpartition("/")[2]]
        media_type = response.headers["Content-Type"].split(";")[0].strip()
        assert media_type in documented["content"], f"{method} {path} {status}: {media_type} is not documented"
        schema = documented["content"][media_type]["schema"]
        if media_type == "application/json":
            body = response.get_json() if hasattr(response, "get_json") else response.json()
            document = {**copy.deepcopy(schema), "components": self.spec["components"]}
            errors = sorted(Draft202012Validator(document, format_checker=FormatChecker()).iter_errors(body),
                            key=str)
            assert not errors, f"{method} {path} {status}: {errors[0].message} in {body}"
        self.checked.add((path, method.upper(), status))
        return response


def test_every_kind_of_answer_matches_the_document(make_app: Callable[..., Flask]) -> None:
    app = with_openapi(make_app(AUTH_DISABLED=False, NOTIFY_MAX_ATTEMPTS=1, WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/x",
                                WEBHOOK_SECRET="s", WEBHOOK_TIMEOUT_SECONDS=1))
    client: FlaskClient = app.test_client()
    doc = Conformance(openapi.build_spec(app))
    admin = {"Authorization": f"Bearer {make_token()}"}
    reader = {"Authorization": f"Bearer {make_token('ann@example.com', ('tasks:read',))}"}
    c = doc.check

    c("/healthz", "GET", client.get("/healthz"))
    if ("/readyz", "GET") in operations(doc.spec):
        assert c("/readyz", "GET", client.get("/readyz")).status_code == 200
        store = app.extensions["store"]

        def down() -> None:
            raise OperationalError("SELECT 1", {}, Exception("gone"))

        store.ping, ping = down, store.ping
        assert c("/readyz", "GET", client.get("/readyz")).status_code == 503
        store.ping = ping
    c("/openapi.json", "GET", client.get("/openapi.json"))
    first = c("/update_task", "POST", client.post("/update_task", headers={**admin, "Idempotency-Key": "k1"},
                                                   json={"task_id": "t1", "user_email": "ann@example.com"}))
    assert first.status_code == 200
    again = c("/update_task", "POST", client.post("/update_task", headers={**admin, "Idempotency-Key": "k1"},
                                                   json={"task_id": "t1", "user_email": "ann@example.com"}))
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert c("/update_task", "POST", client.post("/update_task", headers={**admin, "Idempotency-Key": "k1"},
                                                  json={"task_id": "t2", "user_email": "ann@example.com"})
             ).status_code == 409
    assert c("/tasks/{task_id}", "PUT", client.put("/tasks/t3", headers=admin, json={
        "user_email": "bob@example.com", "title": "Three", "status": "done"})).status_code == 201
    assert c("/tasks/{task_id}", "PUT", client.put("/tasks/t3", headers=admin, json={
        "user_email": "bob@example.com"})).status_code == 200
    assert c("/tasks/{task_id}", "PATCH", client.patch("/tasks/t1", headers=admin, json={
        "title": "One", "description": "Line\nbreak"})).status_code == 200
    assert c("/tasks/{task_id}", "PATCH", client.patch("/tasks/nope", headers=admin, json={
        "title": "x"})).status_code == 404
    assert c("/tasks", "GET", client.get("/tasks?limit=1", headers=admin)).get_json()["next_cursor"]
    assert c("/tasks", "GET", client.get("/tasks", headers=reader)).get_json()["tasks"][0]["task_id"] == "t1"
    c("/tasks/{task_id}", "GET", client.get("/tasks/t1", headers=admin))
    assert c("/tasks/{task_id}", "GET", client.get("/tasks/t3", headers=reader)).status_code == 404
    assert c("/tasks/{task_id}/events", "GET", client.get("/tasks/t1/events?limit=1", headers=admin)
             ).get_json()["next_after"] is not None
    c("/tasks/{task_id}/events", "GET", client.get("/tasks/t1/events", headers=admin))

    # Deliver what is due in this thread: the log channel succeeds, the webhook (nothing listens) dies at once.
    worker = app.extensions["notifications"]
    for delivery in worker.claim_due(100):
        worker.deliver(delivery)
    listed = c("/notifications", "GET", client.get("/notifications?limit=2", headers=admin)).get_json()
    assert listed["next_cursor"] is not None
    rows = c("/notifications", "GET", client.get("/notifications?limit=200", headers=admin)).get_json()
    statuses = {row["status"] for row in rows["notifications"]}
    assert statuses == {"sent", "dead"}
    dead = next(row for row in rows["notifications"] if row["status"] == "dead")
    sent = next(row for row in rows["notifications"] if row["status"] == "sent")
    c("/notifications/{notification_id}", "GET", client.get(f"/notifications/{dead['id']}", headers=admin))
    assert c("/notifications/{notification_id}/retry", "POST",
             client.post(f"/notifications/{dead['id']}/retry", headers=admin)).status_code == 202
    assert c("/notifications/{notification_id}/retry", "POST",
             client.post(f"/notifications/{sent['id']}/retry", headers=admin)).status_code == 409
    assert c("/notifications/{notification_id}", "GET",
             client.get("/notifications/999999", headers=admin)).status_code == 404
    c("/notifications/{notification_id}", "GET", client.get(f"/notifications/{sent['id']}", headers=admin))
    assert c("/tasks/{task_id}", "DELETE", client.delete("/tasks/t3", headers=admin)).status_code == 200

    # Errors.
    assert c("/tasks", "GET", client.get("/tasks")).status_code == 401
    assert c("/tasks", "GET", client.get("/tasks", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert c("/update_task", "POST", client.post("/update_task", headers=reader, json={})).status_code == 403
    assert c("/update_task", "POST", client.post("/update_task", headers=admin, data="{",
                                                  content_type="application/json")).status_code == 400
    assert c("/update_task", "POST", client.post("/update_task", headers=admin, data="x")).status_code == 415
    assert c("/update_task", "POST", client.post("/update_task", headers=admin, json={"task_id": "a"})
             ).status_code == 422
    assert c("/update_task", "POST", client.post("/update_task", headers=admin, json={
        "task_id": "a", "user_email": "a@example.com", "description": "x" * 70_000})).status_code == 413
    assert c("/tasks", "GET", client.get("/tasks?limit=0", headers=admin)).status_code == 422
    assert c("/tasks/{task_id}", "GET", client.get("/tasks/bad%20id", headers=admin)).status_code == 422

    assert len(doc.checked) >= 26  # (operation, status) pairs seen


def test_preferences_digests_and_unsubscribe_answer_as_documented(make_app: Callable[..., Flask]) -> None:
    from datetime import timedelta

    from db import utcnow

    app = with_openapi(make_app(AUTH_DISABLED=False))
    client: FlaskClient = app.test_client()
    doc = Conformance(openapi.build_spec(app))
    c = doc.check
    ann = {"Authorization": f"Bearer {make_token('ann@example.com', ('updates:read',))}"}
    admin = {"Authorization": f"Bearer {make_token()}"}
    wanted = {"email": {"enabled": True, "events": ["task.created"], "digest_seconds": 60},
              "timezone": "Europe/Paris", "quiet_hours": {"start": "22:00", "end": "07:00"}}

    assert c("/preferences", "GET", client.get("/preferences", headers=ann)).status_code == 200
    assert c("/preferences", "GET", client.get("/preferences")).status_code == 401
    assert c("/preferences", "GET", client.get("/preferences?user_email=bob@example.com", headers=ann)
             ).status_code == 403
    assert c("/preferences", "GET", client.get("/preferences?user_email=nope", headers=ann)).status_code == 422
    assert c("/preferences", "PUT", client.put("/preferences", headers=ann, json=wanted)).status_code == 200
    assert c("/preferences", "PUT", client.put("/preferences", headers=ann, json={})).status_code == 422
    assert c("/preferences", "PUT", client.put("/preferences", headers=ann, data="{",
                                               content_type="application/json")).status_code == 400
    assert c("/preferences", "PUT", client.put("/preferences", headers=ann, data="x")).status_code == 415
    assert c("/preferences", "PUT", client.put("/preferences?user_email=bob@example.com", headers=admin,
                                               json=wanted)).status_code == 200
    assert client.put("/preferences", headers=ann, json={**wanted, "quiet_hours": None}).status_code == 200

    # A created task's email held for a digest, an update's suppressed; then the digest goes out.
    for title in ("", "changed"):
        assert client.post("/update_task", headers=admin, json={"task_id": "p1", "user_email": "ann@example.com",
                                                                "title": title}).status_code == 200
    worker = app.extensions["notifications"]
    assert worker.claim_due(100) == []
    rows = c("/notifications", "GET", client.get("/notifications", headers=admin)).get_json()["notifications"]
    assert sorted((row["kind"], row["status"]) for row in rows) == [("digest", "pending"), ("event", "held"),
                                                                   ("event", "suppressed")]
    digest = next(row for row in rows if row["kind"] == "digest")
    worker.clock = lambda: utcnow() + timedelta(seconds=61)
    [delivery] = worker.claim_due(100)
    worker.deliver(delivery)
    shown = c("/notifications/{notification_id}", "GET", client.get(f"/notifications/{digest['id']}",
                                                                    headers=admin)).get_json()
    assert (shown["status"], len(shown["event_ids"])) == ("sent", 1)
    c("/notifications", "GET", client.get("/notifications?status=digested", headers=admin))

    link = app.extensions["unsubscribe"].url("ann@example.com")
    path = link[link.index("/unsubscribe"):]
    assert c("/unsubscribe", "GET", client.get(path)).status_code == 200
    assert c("/unsubscribe", "GET", client.get("/unsubscribe?t=bad")).status_code == 400
    one_click = {"List-Unsubscribe": "One-Click"}
    assert c("/unsubscribe", "POST", client.post(path, data=one_click)).status_code == 200
    assert c("/unsubscribe", "POST", client.post(path, data=one_click, headers={"Accept": "text/html"})
             ).status_code == 200
    assert c("/unsubscribe", "POST", client.post("/unsubscribe?t=bad", data=one_click)).status_code == 400
    assert c("/unsubscribe", "POST", client.post(path, data={"List-Unsubscribe": "no"})).status_code == 422
    assert len(doc.checked) >= 15  # (operation, status) pairs seen


def test_the_event_stream_matches_the_document(app: Flask, start_server: Callable[..., LiveServer]) -> None:
    """/task_updates is not fuzzed (it never ends): its answer and its events are checked here."""
    spec = openapi.build_spec(app)
    server = start_server()
    for number in range(3):
        assert server.post("/update_task", {"task_id": f"s{number}", "user_email": "ann@example.com"}
                           ).status_code == 200
    assert server.get("/tasks").status_code == 200
    stream = server.sse("/task_updates?last_event_id=0")
    try:
        events = stream.wait_for_events(3)
        op = spec["paths"]["/task_updates"]["get"]
        assert str(stream.status) in op["responses"]
        assert stream.response_headers["Content-Type"].split(";")[0] in op["responses"]["200"]["content"]
        validator = Draft202012Validator({"$ref": "#/components/schemas/Event", "components": spec["components"]},
                                         format_checker=FormatChecker())
        for event in events:
            assert not list(validator.iter_errors(event)), event
    finally:
        stream.close()
    refused = server.get("/task_updates?last_event_id=x")
    assert refused.status_code == 422 and "422" in spec["paths"]["/task_updates"]["get"]["responses"]
    assert server.get("/task_updates", token=None).status_code == 401
