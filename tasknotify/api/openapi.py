"""The API's OpenAPI 3.1 document, generated from the pydantic models that validate requests.

Request bodies and query parameters come from schemas.py, the models the views
validate with, so the document cannot drift from what the server accepts.
The response models below describe what the views return (the store's to_dict(),
tasks.py, live/streams.py); tests/test_fuzz.py checks every answer of the live
server against them. build_spec() documents the URL rules the app really has:
tests/test_openapi.py fails when a rule has no operation here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, EmailStr, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from tasknotify.api import tasks as tasks_api
from tasknotify.api.schemas import (
    Description,
    EventListQuery,
    NotificationListQuery,
    NotificationStatus,
    PreferencesQuery,
    TaskId,
    TaskListQuery,
    TaskPatch,
    TaskReplace,
    TaskStatus,
    TaskUpdate,
    Title,
)
from tasknotify.ids import MAX_ID
from tasknotify.preference_document import Preferences

OPENAPI_VERSION = "3.1.0"
API_VERSION = "0.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
SCOPES = {
    "tasks:write": "create, change and delete one's own tasks; retry notifications",
    "tasks:read": "read one's own tasks, their history and their notifications",
    "updates:read": "watch one's own tasks' events live (SSE, Socket.IO)",
    "admin": "all of the above for every user's tasks",
}
# Paths of the app that are not part of the API.
UNDOCUMENTED_PREFIXES = ("/static", "/socket.io")


# -- response models -------------------------------------------------------------------


class _Response(BaseModel):
    # A field the server adds is a spec mismatch until it is described here.
    model_config = ConfigDict(extra="forbid")


class Task(_Response):
    """A task as every endpoint and every event shows it."""

    task_id: TaskId
    user_email: EmailStr
    title: Title
    description: Description
    status: TaskStatus
    created_at: datetime
    updated_at: datetime


EventType = Literal["task.created", "task.updated", "task.deleted"]


class Event(_Response):
    """One entry of the event log: the same payload on SSE, Socket.IO, webhooks and the history API."""

    id: int = Field(ge=1, description="Strictly increasing; the resume point of every stream.")
    type: EventType
    task_id: TaskId
    task: Task = Field(description="The task after the change (for task.deleted: its last state).")
    occurred_at: datetime


class Notification(_Response):
    """One delivery through one channel (the outbox row): an event's, or a digest folding a user's held emails."""

    id: int = Field(ge=1)
    kind: Literal["event", "digest"] = Field(description="event: one event's notification; digest: one email "
                                                         "for the events listed in event_ids.")
    event_id: int | None = Field(ge=1, description="The event (null for a digest).")
    task_id: TaskId | None = Field(description="The event's task (null for a digest).")
    user_email: EmailStr
    channel: str = Field(description="email, webhook or log")
    recipient: str = Field(description="The email address, the webhook URL, or 'log'.")
    status: NotificationStatus = Field(description="pending, retrying, sent, dead; suppressed (by a preference, "
                                                   "see reason); held (for a digest or the end of quiet hours, "
                                                   "until next_attempt_at); digested (folded into digest_id).")
    reason: str | None = Field(description="suppressed: the preference that stopped it (email.enabled, "
                                           "email.events); held: what it waits for (digest, quiet_hours).")
    digest_id: int | None = Field(description="held or digested: the digest notification it is folded into.")
    event_ids: list[int] | None = Field(description="A digest's events, oldest first (null for an event's).")
    attempts: int = Field(ge=0)
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending, retrying), or when "
                                                         "a held one's digest may go out (held).")
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


class TaskList(_Response):
    tasks: list[Task]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class EventList(_Response):
    events: list[Event]
    next_after: int | None = Field(description="Pass as ?after= for the next page; null on the last page.")


class NotificationList(_Response):
    notifications: list[Notification]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class UpdateTaskResponse(_Response):
    status: Literal["task updated, notification will be sent asynchronously"]
    task: Task
    event_id: int = Field(ge=1)


class TaskWritten(_Response):
    task: Task
    event_id: int = Field(ge=1)


class TaskDeleted(_Response):
    deleted: TaskId
    event_id: int = Field(ge=1)


class Unsubscribed(_Response):
    status: Literal["unsubscribed"]
    user_email: EmailStr = Field(description="The user the link was made for.")
    preferences: Preferences = Field(description="Their preferences now: email.enabled is false.")


class StreamCounts(_Response):
    sse: int = Field(ge=0)
    socketio: int = Field(ge=0)


class Health(_Response):
    status: Literal["ok"]
    streams: StreamCounts


class Ready(_Response):
    status: Literal["ready"]
    checks: dict[str, str] = Field(description="Each dependency (database, redis) and its state: ok.")


class ComponentDown(_Response):
    component: str
    message: str


class NotReadyError(_Response):
    code: Literal["unavailable"]
    message: str
    details: list[ComponentDown]


class NotReady(_Response):
    """The error shape, naming the dependencies that are down, with the state of each."""

    error: NotReadyError
    checks: dict[str, str]


class ErrorDetail(BaseModel):
    """What is wrong with one field (other keys may follow)."""

    field: str
    message: str
    type: str | None = None


class ErrorBody(_Response):
    code: str = Field(description="Stable, for programs: e.g. validation_failed, not_found, rate_limited.")
    message: str = Field(description="For people.")
    details: list[ErrorDetail]


class Error(_Response):
    """Every error answer of the API has this shape."""

    error: ErrorBody


REQUEST_MODELS: tuple[type[BaseModel], ...] = (TaskUpdate, TaskReplace, TaskPatch, Preferences)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Task, Event, Notification, TaskList, EventList, NotificationList, UpdateTaskResponse, TaskWritten,
    TaskDeleted, Health, Ready, NotReady, Error, Unsubscribed,
)
QUERY_MODELS: tuple[type[BaseModel], ...] = (TaskListQuery, EventListQuery, NotificationListQuery, PreferencesQuery)


# -- errors ------------------------------------------------------------------------------

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The body is not valid JSON (code malformed_json), or an unsubscribe link's token is not "
                        "one this service signed (code invalid_token)."),
    401: ("Unauthorized", "No token, or a malformed, badly signed or expired one."),
    403: ("Forbidden", "The token lacks the scope, or writes a task (or preferences) of another user."),
    404: ("NotFound", "No such task or notification, or one the token may not see."),
    409: ("Conflict", "The state forbids it (a notification that is not dead), or the Idempotency-Key came "
                      "with a different request (code idempotency_conflict)."),
    413: ("PayloadTooLarge", "The body is larger than MAX_CONTENT_LENGTH."),
    415: ("UnsupportedMediaType", "The body is not sent as application/json."),
    422: ("ValidationFailed", "A missing or invalid field or query parameter; details names each one."),
    429: ("RateLimited", "Too many writes for this token, or too many open streams for this user."),
    503: ("Unavailable", "The server holds as many live streams as it may (MAX_CONNECTIONS); come back later."),
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer realm=\"tasks\""}},
    429: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before trying again."}},
    503: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before trying again."}},
}


def _error_responses() -> dict[str, Any]:
    responses = {}
    for status, (name, description) in _ERRORS.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="Error")}}},
        }
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        responses[name] = response
    return responses


# -- operations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation: how it is called and what it answers. Schemas are model names or raw JSON Schema."""

    operation_id: str
    summary: str
    tag: str
    scope: str | None = None  # None: open to everyone; ANY_TOKEN: any valid token
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    # status -> (description, schema) of the answers particular to this operation (errors: the shared ones)
    ok: dict[int, tuple[str, Any]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    idempotent_writes: bool = False
    extra_parameters: tuple[dict[str, Any], ...] = ()
    media_type: str = "application/json"
    description: str = ""
    form: dict[str, Any] | None = None  # the JSON Schema of a form body (urlencoded or multipart), for body=None
    also_html: bool = False  # the success answers are HTML too, for a browser that prefers it


ANY_TOKEN = "any"
_BODY_ERRORS = (400, 401, 403, 413, 415, 422, 429)
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes the write safe to retry: a retry with the same key and body gets the stored answer "
                   "(with `Idempotent-Replayed: true`) and creates no second event or notification; the same key "
                   "with another body is a 409. Keys are kept 24 hours, per user.",
    "schema": {"type": "string", "pattern": tasks_api.IDEMPOTENCY_KEY_PATTERN.pattern},
}
_REPLAYED = {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]},
                                     "description": "Present when this is the stored answer to an earlier "
                                                    "request with the same Idempotency-Key."}}

_SSE_DESCRIPTION = """\
A Server-Sent Events stream (`text/event-stream`) that never ends on its own. It opens with a `retry:` line;
each event is sent as `id: <event id>` and `data: <Event as JSON>` (no `event:` line, so `EventSource.onmessage`
gets it), and a `: heartbeat` comment comes every SSE_HEARTBEAT_SECONDS. With `Last-Event-ID` (or
`?last_event_id=`) every later event is replayed in order first, then the stream goes on live, with no gap and no
duplicate. A reader sees only its own tasks' events unless its token has `admin`. EventSource cannot set
headers: pass the token as `?access_token=`. The stream ends when the token expires; reconnect with a new one."""

_PREFERENCES_DESCRIPTION = """\
A user's notification preferences. Any valid token of the user will do, whatever its scopes; an `admin` token
acts for another user with `?user_email=` (so must a request when auth is off). A user who never set any has the
defaults of the DEFAULT_* settings. `email.digest_seconds` is 0 (each event mailed on its own) or 60-604800 (events
are held and sent as one digest when the window closes); `quiet_hours` hold email in the user's `timezone` until
they end. Webhooks are not affected."""

_UNSUBSCRIBE_T = {"name": "t", "in": "query", "required": True,
                  "description": "The signed token of the link in the email's List-Unsubscribe header.",
                  "schema": {"type": "string"}}
_ONE_CLICK = {"type": "object", "required": ["List-Unsubscribe"],
              "properties": {"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}}}

OPERATIONS: dict[tuple[str, str], Op] = {
    ("/update_task", "POST"): Op(
        "update_task", "Create or update a task", "tasks", scope="tasks:write", body=TaskUpdate,
        ok={200: ("The task is stored and its event recorded; notifications are sent in the background.",
                  "UpdateTaskResponse")},
        errors=(*_BODY_ERRORS, 409), idempotent_writes=True,
        description="Creates the task if it is new, otherwise changes the fields given.",
    ),
    ("/tasks", "GET"): Op(
        "list_tasks", "List tasks", "tasks", scope="tasks:read", query=TaskListQuery,
        ok={200: ("A page of tasks in creation order.", "TaskList")}, errors=(401, 403, 422),
    ),
    ("/tasks/<task_id>", "GET"): Op(
        "get_task", "Get a task", "tasks", scope="tasks:read",
        ok={200: ("The task.", "Task")}, errors=(401, 403, 404, 422),
    ),
    ("/tasks/<task_id>", "PUT"): Op(
        "replace_task", "Create or replace a task", "tasks", scope="tasks:write", body=TaskReplace,
        ok={200: ("The task was replaced.", "TaskWritten"), 201: ("The task was created.", "TaskWritten")},
        errors=(*_BODY_ERRORS, 404, 409), idempotent_writes=True,
        description="Sets every field; fields left out take their defaults.",
    ),
    ("/tasks/<task_id>", "PATCH"): Op(
        "patch_task", "Change some fields of a task", "tasks", scope="tasks:write", body=TaskPatch,
        ok={200: ("The task was changed.", "TaskWritten")},
        errors=(*_BODY_ERRORS, 404, 409), idempotent_writes=True,
    ),
    ("/tasks/<task_id>", "DELETE"): Op(
        "delete_task", "Delete a task", "tasks", scope="tasks:write",
        ok={200: ("The task was deleted; its task.deleted event carries its last state.", "TaskDeleted")},
        errors=(401, 403, 404, 422, 429),
    ),
    ("/tasks/<task_id>/events", "GET"): Op(
        "task_events", "A task's history", "tasks", scope="tasks:read", query=EventListQuery,
        ok={200: ("The task's events, oldest first.", "EventList")}, errors=(401, 403, 404, 422),
    ),
    ("/task_updates", "GET"): Op(
        "task_updates", "Watch events live (Server-Sent Events)", "streams", scope="updates:read",
        ok={200: ("The event stream.", {"type": "string"})}, errors=(401, 403, 422, 429, 503),
        media_type="text/event-stream", description=_SSE_DESCRIPTION,
        extra_parameters=(
            {"name": "Last-Event-ID", "in": "header", "required": False,
             "description": "The id of the last event seen: every later one is replayed first.",
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
            {"name": "last_event_id", "in": "query", "required": False,
             "description": "Like the Last-Event-ID header, which wins when both are given.",
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
            {"name": "task_id", "in": "query", "required": False, "style": "form", "explode": True,
             "description": "Only these tasks (repeat for several).",
             "schema": {"type": "array", "items": TypeAdapter(TaskId).json_schema()}},
            {"name": "stream_start", "in": "query", "required": False,
             "description": "1: the opening block is also an event named stream_start, with the data "
                            "{\"last_event_id\": N}: the id the stream starts after, for a client to resume from "
                            "before it has seen an event.",
             "schema": {"type": "string", "enum": ["1"]}},
        ),
    ),
    ("/notifications", "GET"): Op(
        "list_notifications", "List notifications and their delivery status", "notifications",
        scope="tasks:read", query=NotificationListQuery,
        ok={200: ("A page of notifications, oldest first.", "NotificationList")}, errors=(401, 403, 422),
    ),
    ("/notifications/<int:notification_id>", "GET"): Op(
        "get_notification", "Get a notification", "notifications", scope="tasks:read",
        ok={200: ("The notification.", "Notification")}, errors=(401, 403, 404),
    ),
    ("/notifications/<int:notification_id>/retry", "POST"): Op(
        "retry_notification", "Retry a dead notification", "notifications", scope="tasks:write",
        ok={202: ("The notification is pending again, with a fresh set of attempts.", "Notification")},
        errors=(401, 403, 404, 409, 429),
    ),
    ("/preferences", "GET"): Op(
        "get_preferences", "A user's notification preferences", "preferences", scope=ANY_TOKEN,
        query=PreferencesQuery, ok={200: ("The preferences (the defaults when the user never set any).",
                                          "Preferences")},
        errors=(401, 403, 422), description=_PREFERENCES_DESCRIPTION,
    ),
    ("/preferences", "PUT"): Op(
        "put_preferences", "Replace a user's notification preferences", "preferences", scope=ANY_TOKEN,
        query=PreferencesQuery, body=Preferences, ok={200: ("The preferences as stored.", "Preferences")},
        errors=_BODY_ERRORS, description=_PREFERENCES_DESCRIPTION + "\n\nThe body is the whole document.",
    ),
    ("/unsubscribe", "GET"): Op(
        "unsubscribe_page", "The page of an unsubscribe link", "preferences",
        ok={200: ("A page with a button that unsubscribes (the GET itself changes nothing).", {"type": "string"})},
        errors=(400,), media_type="text/html", extra_parameters=(_UNSUBSCRIBE_T,),
        description="Mail scanners open links, so a GET never unsubscribes: the page's button makes the POST.",
    ),
    ("/unsubscribe", "POST"): Op(
        "unsubscribe", "One-click unsubscribe (RFC 8058)", "preferences", form=_ONE_CLICK,
        ok={200: ("The link's user gets no more email (email.enabled is false); the same answer every time.",
                  "Unsubscribed")},
        errors=(400, 413, 422), extra_parameters=(_UNSUBSCRIBE_T,), also_html=True,
        description="What a mail provider sends for the List-Unsubscribe-Post header: the form body "
                    "`List-Unsubscribe=One-Click`, and no other credential than the signed `t`. A browser that "
                    "prefers text/html (the button of GET /unsubscribe) gets a page.",
    ),
    ("/healthz", "GET"): Op(
        "healthz", "Liveness", "service", ok={200: ("The process answers.", "Health")},
    ),
    ("/readyz", "GET"): Op(
        "readyz", "Readiness", "service",
        ok={200: ("The database (and Redis, when configured) answer.", "Ready"),
            503: ("A dependency is down.", "NotReady")},
    ),
    ("/metrics", "GET"): Op(
        "metrics", "Prometheus metrics", "service", ok={200: ("Prometheus text format.", {"type": "string"})},
        media_type="text/plain",
    ),
    ("/openapi.json", "GET"): Op(
        "openapi", "This document", "service", ok={200: ("The OpenAPI 3.1 document.", {"type": "object"})},
    ),
    ("/", "GET"): Op(
        "livePage", "The live page: watch updates as they happen, post one", "service",
        ok={200: ("An HTML page.", {"type": "string"})}, media_type="text/html",
    ),
}

_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "task_id": {"description": "1-64 letters, digits, '.', '_' or '-', other than '.' and '..'.",
                "schema": TypeAdapter(TaskId).json_schema()},
    "notification_id": {"description": "A notification's id.",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
}


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: /tasks/<int:id> -> /tasks/{id}."""
    parts = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            part = "{" + part[1:-1].rpartition(":")[2] + "}"
        parts.append(part)
    return "/".join(parts)


def documented_rules(app: Flask) -> list[tuple[str, str]]:
    """(rule, method) of every route of the app that belongs in the document."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith(UNDOCUMENTED_PREFIXES):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method))
    return found


# -- schemas -----------------------------------------------------------------------------


def _component_schemas() -> dict[str, Any]:
    """Every request and response model and what they refer to, keyed by model name."""
    models = [(model, "validation") for model in REQUEST_MODELS] + [(model, "serialization")
                                                                     for model in RESPONSE_MODELS]
    _, top = models_json_schema(models, ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
    return dict(sorted(top.get("$defs", {}).items()))


def _query_parameters(model: type[BaseModel], components: dict[str, Any]) -> list[dict[str, Any]]:
    """One query parameter per field of a query model, with the field's schema."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    for name, definition in schema.pop("$defs", {}).items():
        if components.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas are named {name}")
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        # A query parameter is absent rather than null: drop the null branch of optional fields.
        options = prop.get("anyOf")
        if options and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            del prop["anyOf"]
            prop = {**rest[0], **prop} if len(rest) == 1 else {"anyOf": rest, **prop}
            if prop.get("default", ...) is None:
                del prop["default"]
        parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return parameters


def _schema(value: Any) -> dict[str, Any]:
    return {"$ref": REF_TEMPLATE.format(model=value)} if isinstance(value, str) else value


def _operation(rule: str, op: Op, components: dict[str, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            name = part[1:-1].rpartition(":")[2]
            parameters.append({"name": name, "in": "path", "required": True, **_PATH_PARAMETERS[name]})
    if op.query is not None:
        parameters += _query_parameters(op.query, components)
    parameters += op.extra_parameters
    if op.idempotent_writes:
        parameters.append(_IDEMPOTENCY_KEY)

    description = op.description
    if op.scope is None:
        description = (description + "\n\n" if description else "") + "Open: no token needed."
    elif op.scope == ANY_TOKEN:
        description = (description + "\n\n" if description else "") + "Requires a valid token, of any scope."
    else:
        description = (description + "\n\n" if description else "") + f"Requires the scope `{op.scope}`."
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": description,
        "tags": [op.tag],
    }
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(op.body.__name__)}},
        }
    elif op.form is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": op.form} for media in ("application/x-www-form-urlencoded",
                                                                 "multipart/form-data")},
        }
    responses: dict[str, Any] = {}
    for status, (text, schema) in op.ok.items():
        response: dict[str, Any] = {"description": text, "content": {op.media_type: {"schema": _schema(schema)}}}
        if op.also_html:
            response["content"]["text/html"] = {"schema": {"type": "string"}}
        if op.idempotent_writes:
            response["headers"] = _REPLAYED
        responses[str(status)] = response
    for status in sorted(op.errors):
        responses[str(status)] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
    operation["responses"] = responses
    if op.scope is None:
        operation["security"] = []
    elif op.scope == ANY_TOKEN:
        operation["security"] = [{"bearerAuth": []}]
    elif op.media_type == "text/event-stream":
        operation["security"] = [{"bearerAuth": [op.scope]}, {"accessToken": [op.scope]}]
    else:
        operation["security"] = [{"bearerAuth": [op.scope]}]
    return operation


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every documented route the app has."""
    components = _component_schemas()
    paths: dict[str, dict[str, Any]] = {}
    for rule, method in documented_rules(app):
        op = OPERATIONS.get((rule, method))
        if op is None:
            continue  # tests/test_openapi.py names it
        paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation(rule, op, components)
    scopes = "\n".join(f"- `{name}`: {text}" for name, text in SCOPES.items())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Task notification service",
            "version": API_VERSION,
            "description": "Task updates, their event log, live streams and notification delivery.\n\n"
                           "Every error answer is `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        },
        "tags": [
            {"name": "tasks", "description": "Tasks and their history."},
            {"name": "streams", "description": "Live events (Socket.IO is described in the README)."},
            {"name": "notifications", "description": "Delivery status of notifications."},
            {"name": "preferences", "description": "Each user's notification preferences, and one-click "
                                                   "unsubscribe."},
            {"name": "service", "description": "Health and this document."},
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": _error_responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <token>`: a JWT signed with HS256 and SECRET_KEY, with "
                                   "the claims sub (the user's email), scope (space-separated) and exp. Make one "
                                   "with `flask --app app token create --user EMAIL --scope SCOPE`. With an "
                                   "identity provider configured (JWT_JWKS_URL or OIDC_ISSUER), its tokens are "
                                   "accepted too (503 while none of its keys could be fetched). Scopes:\n\n"
                                   + scopes,
                },
                "accessToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "access_token",
                    "description": "The same token as a query parameter, for EventSource (GET /task_updates only).",
                },
            },
        },
    }


bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    """The OpenAPI document (built once per app)."""
    spec = current_app.extensions.get("openapi")
    if spec is None:
        spec = current_app.extensions["openapi"] = build_spec(current_app)
    return jsonify(spec)
