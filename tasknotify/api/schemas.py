"""Request validation: pydantic models for every body and query string the API accepts."""

from __future__ import annotations

import functools
import re
import zoneinfo
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.networks import validate_email

from tasknotify.store.store import MAX_ID

# 1-64 letters, digits, '.', '_' or '-', except '.' and '..': a URL path cannot carry those
# two as a segment (clients remove them, RFC 3986 5.2.4), so such a task could not be fetched.
# No look-ahead: pydantic's regex engine has none, and JSON Schema readers share the pattern.
TASK_ID_PATTERN = r"^(?:[A-Za-z0-9._-]{3,64}|[A-Za-z0-9_-][A-Za-z0-9._-]?|\.[A-Za-z0-9_-])$"
TASK_ID_RULE = "task_id must be 1-64 letters, digits, '.', '_' or '-', other than '.' and '..'"
_TASK_ID = re.compile(TASK_ID_PATTERN)
TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]


def is_task_id(value: Any) -> bool:
    """Whether value is a task id (TASK_ID_RULE)."""
    return isinstance(value, str) and _TASK_ID.fullmatch(value) is not None


_DECIMAL = re.compile(r"[0-9]+")
_MAX_ID_DIGITS = len(str(MAX_ID))
EVENT_ID_RULE = "must be a non-negative decimal integer event id (digits 0-9 only)"


def event_id(value: Any) -> int:
    """A client's event id: ASCII digits, or a JSON integer, from 0 to MAX_ID; ValueError for anything else."""
    number = -1
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        digits = value.lstrip("0") or "0"
        number = int(digits) if len(digits) <= _MAX_ID_DIGITS else MAX_ID + 1  # no work on a huge number
    if not 0 <= number <= MAX_ID:
        raise ValueError("not a non-negative decimal integer")
    return number


# The one parser of event ids (streams.parse_event_id uses it for SSE and Socket.IO).
EventId = Annotated[int, BeforeValidator(event_id), WithJsonSchema({"type": "integer", "minimum": 0,
                                                                     "maximum": MAX_ID})]
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



# -- notification preferences ---------------------------------------------------------

EVENT_TYPES = ("task.created", "task.updated", "task.deleted")
EventType = Literal["task.created", "task.updated", "task.deleted"]
DIGEST_MIN_SECONDS = 60
DIGEST_MAX_SECONDS = 7 * 24 * 3600


def check_digest_seconds(value: int) -> int:
    """0 (each event on its own) or a window of 60 s to a week; ValueError otherwise."""
    if value != 0 and not DIGEST_MIN_SECONDS <= value <= DIGEST_MAX_SECONDS:
        raise ValueError(f"must be 0 or {DIGEST_MIN_SECONDS}-{DIGEST_MAX_SECONDS}")
    return value


@functools.lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: str) -> str:
    """An IANA time zone name (Europe/Paris, UTC); ValueError otherwise."""
    if value not in _timezones():
        raise ValueError(f"{value!r} is not an IANA time zone name such as 'Europe/Paris' or 'UTC'")
    return value


def _unique_events(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("lists an event type twice")
    return value


DigestSeconds = Annotated[
    StrictInt, AfterValidator(check_digest_seconds),
    WithJsonSchema({"anyOf": [{"type": "integer", "const": 0},
                              {"type": "integer", "minimum": DIGEST_MIN_SECONDS, "maximum": DIGEST_MAX_SECONDS}],
                    "description": "0: each event is mailed on its own; otherwise the length of a digest window"}),
]
TimeZoneName = Annotated[
    str, AfterValidator(check_timezone),
    WithJsonSchema({"type": "string", "description": "An IANA time zone name, e.g. Europe/Paris or UTC",
                    "examples": ["UTC", "Europe/Paris", "America/New_York"]}),
]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
EventTypes = Annotated[list[EventType], AfterValidator(_unique_events), Field(json_schema_extra={"uniqueItems": True})]


class EmailPreferences(_Body):
    """The email channel: on or off, which event types send email, and the digest window."""

    enabled: StrictBool
    events: EventTypes
    digest_seconds: DigestSeconds


class QuietHours(_Body):
    """A daily span ("22:00" to "07:00", in the user's time zone) in which email waits."""

    start: ClockTime
    end: ClockTime

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


class Preferences(_Body):
    """A user's notification preferences: the whole document, as GET and PUT /preferences show it."""

    email: EmailPreferences
    timezone: TimeZoneName
    quiet_hours: QuietHours | None


class PreferencesQuery(_Query):
    user_email: Email | None = None
