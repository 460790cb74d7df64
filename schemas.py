"""Request validation: pydantic models for every body and query string the API accepts."""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic.networks import validate_email

TaskId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Title = Annotated[str, StringConstraints(max_length=200)]
Description = Annotated[str, StringConstraints(max_length=10_000)]


@functools.lru_cache(maxsize=10_000)
def _email(value: str) -> str:
    # pydantic's EmailStr check, remembered: it cost a twentieth of a write's time, and the
    # same addresses come back write after write. Refusals raise, so they are not kept.
    return validate_email(value)[1].lower()


def canonical_email(value: str) -> str:
    """The canonical form of an email address: email-validator's normalization, lowercased as a whole.

    Two addresses are the same user when their canonical forms are equal; the
    service stores, compares and sends mail to this form. Raises ValueError
    (pydantic's "value is not a valid email address: ...") when value is not one.
    """
    return _email(value)


# EmailStr in its canonical form, validated once per distinct address
Email = Annotated[str, AfterValidator(_email), WithJsonSchema({"type": "string", "format": "email"})]


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
    after: int = Field(0, ge=0, le=2**63 - 1)
    limit: int = Field(100, ge=1, le=1000)


class NotificationListQuery(_Query):
    task_id: TaskId | None = None
    status: NotificationStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None

