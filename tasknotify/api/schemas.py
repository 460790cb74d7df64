"""Request validation: pydantic models for every body and query string the API accepts.

The rules they share with other layers are in tasknotify/ids.py (task and event ids,
emails) and tasknotify/preference_document.py (the preferences document, PUT /preferences's body).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from tasknotify.ids import MAX_ID, TASK_ID_PATTERN, canonical_email, event_id

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
EventId = Annotated[int, BeforeValidator(event_id), WithJsonSchema({"type": "integer", "minimum": 0,
                                                                     "maximum": MAX_ID})]
Title = Annotated[str, StringConstraints(max_length=200)]
Description = Annotated[str, StringConstraints(max_length=10_000)]
# EmailStr in its canonical form, validated once per distinct address
Email = Annotated[str, AfterValidator(canonical_email), WithJsonSchema({"type": "string", "format": "email"})]


class TaskStatus(StrEnum):
    open = "open"
    in_progress = "in_progress"
    done = "done"
    cancelled = "cancelled"


class NotificationStatus(StrEnum):
    pending = "pending"
    retrying = "retrying"
    sent = "sent"
    dead = "dead"
    suppressed = "suppressed"
    held = "held"
    digested = "digested"


class _Body(BaseModel):
    # Unknown keys are refused, so a misspelt field is a 422, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class TaskUpdate(_Body):
    """POST /update_task: create the task if new, otherwise change the fields given."""

    task_id: TaskId
    user_email: Email
    title: Title | None = None
    status: TaskStatus | None = None
    description: Description | None = None


class TaskReplace(_Body):
    """PUT /tasks/<task_id>: the whole task; fields left out take their defaults."""

    user_email: Email
    title: Title = ""
    status: TaskStatus = TaskStatus.open
    description: Description = ""


class TaskPatch(_Body):
    """PATCH /tasks/<task_id>: only the fields given change."""

    user_email: Email | None = None
    title: Title | None = None
    status: TaskStatus | None = None
    description: Description | None = None


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskListQuery(_Query):
    user_email: Email | None = None
    status: TaskStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None


class EventListQuery(_Query):
    after: EventId = 0
    limit: int = Field(100, ge=1, le=1000)


class NotificationListQuery(_Query):
    task_id: TaskId | None = None
    status: NotificationStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None


class PreferencesQuery(_Query):
    user_email: Email | None = None
