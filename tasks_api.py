"""The REST API: task writes (which record an event and its notifications), reads, delivery status."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel

import notifications
from auth import current_viewer
from broker import Event
from db import Store, TaskNotFound, decode_cursor, encode_cursor
from errors import APIError
from schemas import EventListQuery, NotificationListQuery, TaskListQuery, TaskPatch, TaskReplace, TaskUpdate

bp = Blueprint("api", __name__)

_TASK_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
UPDATE_ACCEPTED = "task updated, notification will be sent asynchronously"


def _store() -> Store:
    return current_app.extensions["store"]


def _after_commit(event: Event) -> None:
    """Hand a committed event to the live streams and wake the notification workers."""
    current_app.extensions["broker"].publish(event)
    current_app.extensions["notifications"].wake()


def json_body() -> Any:
    """The request's JSON body: 415 when it is not JSON, 400 when it does not parse, 413 when too large."""
    if not request.is_json:
        raise APIError(415, "the body must be JSON, sent with Content-Type: application/json")
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON: {exc}", code="malformed_json") from None


def query(model: type[BaseModel]) -> Any:
    """Validate the query string against model (422 naming the field when it does not fit)."""
    return model.model_validate(request.args.to_dict())


def checked_task_id(task_id: str) -> str:
    if not _TASK_ID.match(task_id):
        raise APIError(422, "task_id must be 1-64 letters, digits, '.', '_' or '-'",
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


def _change(task_id: str, fields: dict[str, Any], mode: str) -> tuple[dict[str, Any], Event, bool]:
    try:
        return _store().change_task(task_id, fields, mode=mode, outbox=_outbox(), after_commit=_after_commit)
    except TaskNotFound:
        raise APIError(404, f"no task {task_id!r}") from None


@bp.post("/update_task")
def update_task() -> ResponseReturnValue:
    """Create the task or change the fields given; notifications are sent in the background."""
    update = TaskUpdate.model_validate(json_body())
    fields = update.model_dump(exclude={"task_id"}, exclude_none=True, mode="json")
    task, event, _ = _change(update.task_id, fields, "upsert")
    return jsonify({"status": UPDATE_ACCEPTED, "task": task, "event_id": event.id})


@bp.get("/tasks")
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
def get_task(task_id: str) -> ResponseReturnValue:
    return jsonify(visible_task(task_id))


@bp.put("/tasks/<task_id>")
def replace_task(task_id: str) -> ResponseReturnValue:
    """Set every field of the task, creating it if new (201) or replacing it (200)."""
    checked_task_id(task_id)
    body = TaskReplace.model_validate(json_body())
    task, event, created = _change(task_id, body.model_dump(mode="json"), "replace")
    return jsonify({"task": task, "event_id": event.id}), 201 if created else 200


@bp.patch("/tasks/<task_id>")
def patch_task(task_id: str) -> ResponseReturnValue:
    checked_task_id(task_id)
    body = TaskPatch.model_validate(json_body())
    task, event, _ = _change(task_id, body.model_dump(exclude_none=True, mode="json"), "patch")
    return jsonify({"task": task, "event_id": event.id})


@bp.delete("/tasks/<task_id>")
def delete_task(task_id: str) -> ResponseReturnValue:
    checked_task_id(task_id)
    try:
        event = _store().delete_task(task_id, outbox=_outbox(), after_commit=_after_commit)
    except TaskNotFound:
        raise APIError(404, f"no task {task_id!r}") from None
    return jsonify({"deleted": task_id, "event_id": event.id})


@bp.get("/tasks/<task_id>/events")
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
    row = notifications.get_notification(_store(), notification_id)
    if row is None or not current_viewer().may_see(row["user_email"]):
        raise APIError(404, f"no notification {notification_id}")
    return row


@bp.get("/notifications/<int:notification_id>")
def get_notification(notification_id: int) -> ResponseReturnValue:
    return jsonify(_visible_notification(notification_id))


@bp.post("/notifications/<int:notification_id>/retry")
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
