"""The identifiers every layer reads the same way: task ids, event ids, and users' emails in canonical form.

The API validates requests with them, the live streams the ids a client
sends, tokens and preferences the emails they name.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic.networks import validate_email

MAX_ID = 2**63 - 1  # ids are 64-bit integers in every database

# 1-64 letters, digits, '.', '_' or '-', except '.' and '..': a URL path cannot carry those
# two as a segment (clients remove them, RFC 3986 5.2.4), so such a task could not be fetched.
# No look-ahead: pydantic's regex engine has none, and JSON Schema readers share the pattern.
TASK_ID_PATTERN = r"^(?:[A-Za-z0-9._-]{3,64}|[A-Za-z0-9_-][A-Za-z0-9._-]?|\.[A-Za-z0-9_-])$"
TASK_ID_RULE = "task_id must be 1-64 letters, digits, '.', '_' or '-', other than '.' and '..'"
_TASK_ID = re.compile(TASK_ID_PATTERN)


def is_task_id(value: Any) -> bool:
    """Whether value is a task id (TASK_ID_RULE)."""
    return isinstance(value, str) and _TASK_ID.fullmatch(value) is not None


_DECIMAL = re.compile(r"[0-9]+")
_MAX_ID_DIGITS = len(str(MAX_ID))
EVENT_ID_RULE = "must be a non-negative decimal integer event id (digits 0-9 only)"


def event_id(value: Any) -> int:
    """A client's event id: ASCII digits, or a JSON integer, from 0 to MAX_ID; ValueError for anything else.

    The one parser of event ids: the API's query strings (schemas.EventId), SSE and Socket.IO.
    """
    number = -1
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        digits = value.lstrip("0") or "0"
        number = int(digits) if len(digits) <= _MAX_ID_DIGITS else MAX_ID + 1  # no work on a huge number
    if not 0 <= number <= MAX_ID:
        raise ValueError("not a non-negative decimal integer")
    return number


# Remembered: pydantic's EmailStr check cost a twentieth of a write's time, and the same
# addresses come back write after write. Refusals raise, so they are not kept.
@functools.lru_cache(maxsize=10_000)
def canonical_email(value: str) -> str:
    """The canonical form of an email address: email-validator's normalization, lowercased as a whole.

    Two addresses are the same user when their canonical forms are equal; the
    service stores, compares and sends mail to this form. Raises ValueError
    (pydantic's "value is not a valid email address: ...") when value is not one.
    """
    return validate_email(value)[1].lower()
