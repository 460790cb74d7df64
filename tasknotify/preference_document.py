"""A user's notification preferences as one document: the pydantic model, its rules and the event types.

The API reads and writes it (GET and PUT /preferences), delivery decides each
email by it, and config checks the DEFAULT_* settings with the same rules.
"""

from __future__ import annotations

import functools
import zoneinfo
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

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


class _Part(BaseModel):
    # Unknown keys are refused, so a misspelt field is a 422, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class EmailPreferences(_Part):
    """The email channel: on or off, which event types send email, and the digest window."""

    enabled: StrictBool
    events: EventTypes
    digest_seconds: DigestSeconds


class QuietHours(_Part):
    """A daily span ("22:00" to "07:00", in the user's time zone) in which email waits."""

    start: ClockTime
    end: ClockTime

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


class Preferences(_Part):
    """A user's notification preferences: the whole document, as GET and PUT /preferences show it."""

    email: EmailPreferences
    timezone: TimeZoneName
    quiet_hours: QuietHours | None
