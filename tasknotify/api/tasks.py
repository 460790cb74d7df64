"""The REST API: task writes (which record an event and its notifications), reads, delivery status."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tasknotify import fences
from tasknotify.api.auth import current_viewer, rate_limit_caller, requires
from tasknotify.api.ratelimit import WriteLimit, write_limited
from tasknotify.api.schemas import (
    EventListQuery,
    NotificationListQuery,
    TaskListQuery,
    TaskPatch,
    TaskReplace,
    TaskUpdate,
)
from tasknotify.delivery import worker as notifications
from tasknotify.errors import APIError
from tasknotify.events import Event
from tasknotify.ids import MAX_ID, TASK_ID_RULE, is_task_id
from tasknotify.live.broker import BrokerUnavailable
from tasknotify.store.store import Idempotency, Store, TaskNotFound, decode_cursor, encode_cursor

bp = Blueprint("api", __name__)

IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
UPDATE_ACCEPTED = "task updated, notification will be sent asynchronously"


def _store() -> Store:
    return current_app.extensions["store"]


def _after_commit(event: Event) -> None:
    """Hand a committed event to the live streams and wake the notification workers."""
    current_app.extensions["broker"].publish(event)
    current_app.extensions["notifications"].wake()
    current_app.extensions["metrics"].event_published()


def json_body() -> Any:
    """The request's JSON body: 415 when it is not JSON, 400 when it does not parse, 413 when too large."""
    if not request.is_json:
        raise APIError(415, "the body must be JSON, sent with Content-Type: application/json")
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON: {exc}", code="malformed_json") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise APIError(400, "malformed JSON: nested too deeply", code="malformed_json") from None


def query(model: type[BaseModel]) -> Any:
    """Validate the query string against model (422 naming the field when it does not fit)."""
    return model.model_validate(request.args.to_dict())


def checked_task_id(task_id: str) -> str:
    if not is_task_id(task_id):
        raise APIError(422, TASK_ID_RULE,
                       details=[{"field": "task_id", "message": "invalid task id"}])
    return task_id


def cursor_row(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        return decode_cursor(cursor)
    except ValueError:
        raise APIError(422, "cursor is not one this API gave out",
                       details=[{"field": "cursor", "message": "invalid cursor"}]) from None


def visible_task(task_id: str) -> dict[str, Any]:
    """The task, if it exists and the viewer may see it; 404 otherwise (never 403, which would leak it)."""
    task = _store().get_task(checked_task_id(task_id))
    if task is None or not current_viewer().may_see(task["user_email"]):
        raise APIError(404, f"no task {task_id!r}")
    return task


def _outbox() -> Any:
    return current_app.extensions["outbox"]


def _owner_checked(user_email: str | None) -> str | None:
    """The owner a non-admin writer is limited to; 403 when it writes a task for someone else."""
    owner = current_viewer().only_email
    if owner is not None and user_email is not None and user_email != owner:
        raise APIError(403, "a token may only write tasks whose user_email is its own user",
                       details=[{"field": "user_email", "message": f"must be {owner}"}])
    return owner


def _idempotency() -> Idempotency | None:
    """The request's Idempotency-Key, with a fingerprint of what it asks, or None."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise APIError(422, "Idempotency-Key must be 1-255 visible ASCII characters",
                       details=[{"field": "Idempotency-Key", "message": "invalid key"}])
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode() + request.get_data(cache=True))
    return Idempotency(owner=current_viewer().email or "", key=key, fingerprint=digest.hexdigest())


# Builds a write's answer from the task, the event id and whether the task was created.
Respond = Callable[[dict[str, Any], int, bool], tuple[Response, int]]


def _replay(idempotency: Idempotency | None, respond: Respond) -> ResponseReturnValue | None:
    """The first answer to a write made with this key, or None; 409 when the key came with another request."""
    prior = _store().prior_write(idempotency.owner, idempotency.key) if idempotency else None
    if prior is None:
        return None
    if prior.fingerprint != idempotency.fingerprint:  # type: ignore[union-attr]
        raise APIError(409, "this Idempotency-Key was used with a different request", code="idempotency_conflict")
    body, status = respond(prior.event["task"], prior.event["id"], prior.created)
    return body, status, {"Idempotent-Replayed": "true"}


def _write(task_id: str, fields: dict[str, Any], mode: str, respond: Respond) -> ResponseReturnValue:
    """Apply a change once per Idempotency-Key: a retry with the same key and body gets the first answer."""
    owner = _owner_checked(fields.get("user_email"))
    idempotency = _idempotency()
    earlier = _replay(idempotency, respond)
    if earlier is not None:
        return earlier
    try:
        task, event, created = _store().change_task(task_id, fields, mode=mode, outbox=_outbox(),
                                                    after_commit=_after_commit, owner=owner,
                                                    idempotency=idempotency)
    except TaskNotFound:
        raise APIError(404, f"no task {task_id!r}") from None
    except IntegrityError:
        earlier = _replay(idempotency, respond)  # the same key won a race in another process
        if earlier is None:
            raise
        return earlier
    return respond(task, event.id, created)


@bp.post("/update_task")
@write_limited
@requires("tasks:write")
def update_task() -> ResponseReturnValue:
    """Create the task or change the fields given; notifications are sent in the background."""
    update = TaskUpdate.model_validate(json_body())
    fields = update.model_dump(exclude={"task_id"}, exclude_none=True, mode="json")
    return _write(update.task_id, fields, "upsert",
                  lambda task, event_id, _: (jsonify({"status": UPDATE_ACCEPTED, "task": task,
                                                      "event_id": event_id}), 200))


@bp.get("/tasks")
@requires("tasks:read")
def list_tasks() -> ResponseReturnValue:
    params: TaskListQuery = query(TaskListQuery)
    only = current_viewer().only_email
    if only is not None and params.user_email not in (None, only):
        return jsonify({"tasks": [], "next_cursor": None})
    tasks, next_cursor = _store().list_tasks(
        user_email=only or params.user_email,
        status=params.status.value if params.status else None,
        limit=params.limit,
        after_row=cursor_row(params.cursor),
    )
    return jsonify({"tasks": tasks, "next_cursor": next_cursor})


@bp.get("/tasks/<task_id>")
@requires("tasks:read")
def get_task(task_id: str) -> ResponseReturnValue:
    return jsonify(visible_task(task_id))


@bp.put("/tasks/<task_id>")
@write_limited
@requires("tasks:write")
def replace_task(task_id: str) -> ResponseReturnValue:
    """Set every field of the task, creating it if new (201) or replacing it (200)."""
    checked_task_id(task_id)
    body = TaskReplace.model_validate(json_body())
    return _write(task_id, body.model_dump(mode="json"), "replace",
                  lambda task, event_id, created: (jsonify({"task": task, "event_id": event_id}),
                                                   201 if created else 200))


@bp.patch("/tasks/<task_id>")
@write_limited
@requires("tasks:write")
def patch_task(task_id: str) -> ResponseReturnValue:
    checked_task_id(task_id)
    body = TaskPatch.model_validate(json_body())
    return _write(task_id, body.model_dump(exclude_none=True, mode="json"), "patch",
                  lambda task, event_id, _: (jsonify({"task": task, "event_id": event_id}), 200))


@bp.delete("/tasks/<task_id>")
@write_limited
@requires("tasks:write")
def delete_task(task_id: str) -> ResponseReturnValue:
    checked_task_id(task_id)
    try:
        event = _store().delete_task(task_id, outbox=_outbox(), after_commit=_after_commit,
                                     owner=current_viewer().only_email)
    except TaskNotFound:
        raise APIError(404, f"no task {task_id!r}") from None
    return jsonify({"deleted": task_id, "event_id": event.id})


@bp.get("/tasks/<task_id>/events")
@requires("tasks:read")
def task_events(task_id: str) -> ResponseReturnValue:
    """The task's history, oldest first; page with ?after=<last id seen>."""
    checked_task_id(task_id)
    params: EventListQuery = query(EventListQuery)
    viewer = current_viewer()
    events = _store().events_after(params.after, task_ids=frozenset({task_id}),
                                   user_email=viewer.only_email, limit=params.limit)
    next_after = events[-1].id if len(events) == params.limit else None
    # The payloads are stored encoded: splice them in rather than decode and encode again.
    body = '{"events":[' + ",".join(e.data for e in events) + '],"next_after":' + json.dumps(next_after) + "}"
    return Response(body, mimetype="application/json")


@bp.get("/notifications")
@requires("tasks:read")
def list_notifications() -> ResponseReturnValue:
    params: NotificationListQuery = query(NotificationListQuery)
    rows, last = notifications.list_notifications(
        _store(),
        task_id=params.task_id,
        status=params.status.value if params.status else None,
        user_email=current_viewer().only_email,
        limit=params.limit,
        after_row=cursor_row(params.cursor),
    )
    return jsonify({"notifications": rows, "next_cursor": None if last is None else encode_cursor(last)})


def _visible_notification(notification_id: int) -> dict[str, Any]:
    row = notifications.get_notification(_store(), notification_id) if notification_id <= MAX_ID else None
    if row is None or not current_viewer().may_see(row["user_email"]):
        raise APIError(404, f"no notification {notification_id}")
    return row


@bp.get("/notifications/<int:notification_id>")
@requires("tasks:read")
def get_notification(notification_id: int) -> ResponseReturnValue:
    return jsonify(_visible_notification(notification_id))


@bp.post("/notifications/<int:notification_id>/retry")
@write_limited
@requires("tasks:write")
def retry_notification(notification_id: int) -> ResponseReturnValue:
    """Give a dead notification a fresh set of attempts (409 unless it is dead)."""
    _visible_notification(notification_id)
    try:
        row = notifications.retry_dead(_store(), notification_id)
    except ValueError as exc:
        raise APIError(409, str(exc)) from None
    if row is None:
        raise APIError(404, f"no notification {notification_id}")
    current_app.extensions["notifications"].wake()
    return jsonify(row), 202


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Liveness: the process answers; with the number of open streams."""
    return jsonify({"status": "ok", "streams": current_app.extensions["streams"].counts})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Readiness: the database answers, and the shared broker (Redis) when one is configured."""
    checks: dict[str, str] = {}
    try:
        _store().ping()
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"unavailable: {exc.__class__.__name__}"
    provider = current_app.extensions.get("identity_provider")
    if provider is not None:
        checks["identity_provider"] = provider.readiness()
    if current_app.config.get("REDIS_URL"):
        try:
            current_app.extensions["broker"].ping()
            checks["redis"] = "ok"
        except BrokerUnavailable as exc:
            checks["redis"] = f"unavailable: {exc}"
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        details = [{"component": name, "message": checks[name]} for name in down]
        body = {"error": {"code": "unavailable", "message": f"not ready: {', '.join(down)} down", "details": details},
                "checks": checks}
        return jsonify(body), 503
    return jsonify({"status": "ready", "checks": checks})


def init_app(app: Flask) -> WriteLimit:
    """Register the API and rate-limit its writes per caller (RATE_LIMIT_WRITES; services RATE_LIMIT_SERVICE_WRITES)."""
    app.register_blueprint(bp)
    uri = app.config["RATE_LIMIT_STORAGE_URI"]
    swept = uri == "memory://" and fences.of(app).check("ratelimit-sweep")
    write_limit = WriteLimit(app.config["RATE_LIMIT_WRITES"], uri, swept)
    service_limit = WriteLimit(app.config["RATE_LIMIT_SERVICE_WRITES"], uri, swept)

    def limit_for_caller() -> tuple[WriteLimit, str]:
        key, service = rate_limit_caller()
        return (service_limit, f"service:{key}") if service else (write_limit, key)

    app.extensions["write_limit"] = write_limit
    app.extensions["write_limit_for"] = limit_for_caller  # what @write_limited counts against
    return write_limit
