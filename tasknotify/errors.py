"""One error shape for the whole API: {"error": {"code", "message", "details"}}.

APIError is what views raise for expected failures; werkzeug's HTTPExceptions
(404, 405, 413, ...) and pydantic's ValidationError are turned into the same
shape, so a client never sees HTML or a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger("errors")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    503: "unavailable",
}


class APIError(Exception):
    """An expected failure with its HTTP status, a stable code and a human message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> ResponseReturnValue:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return jsonify(body), status


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Name each invalid field with a dotted path and say what is wrong with it."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        details.append({"field": field, "message": err["msg"], "type": err["type"]})
    return details


def _handle_api_error(exc: APIError) -> ResponseReturnValue:
    body, status = error_response(exc.status, exc.code, exc.message, exc.details)
    return body, status, exc.headers


def _handle_validation_error(exc: ValidationError) -> ResponseReturnValue:
    details = validation_details(exc)
    fields = ", ".join(d["field"] for d in details)
    return error_response(422, "validation_failed", f"invalid or missing fields: {fields}", details)


def _handle_http_exception(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    body, status = error_response(status, _CODES.get(status, "error"), exc.description or exc.name)
    # Keep headers such as Allow (405) and Retry-After (429); the body is ours.
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    return body, status, headers


def _handle_unexpected(exc: Exception) -> ResponseReturnValue:
    logger.exception("unhandled error")
    return error_response(500, "internal_error", "internal server error")


def init_app(app: Flask) -> None:
    app.register_error_handler(APIError, _handle_api_error)
    app.register_error_handler(ValidationError, _handle_validation_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
