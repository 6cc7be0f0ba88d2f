"""One JSON shape for every error: RFC 9457 problem details.

HTTP errors keep their status and headers (Allow, Retry-After, ...); request
validation failures name the bad fields (a bounded list that never echoes input);
anything unexpected is logged with its traceback and answered with a bare 500
that reveals nothing. Every problem carries the request's id (an RFC 9457
extension member), so that a client can quote it and an operator find its
log lines.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, g, request
from pydantic import BaseModel, ConfigDict, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A 422 names at most this many fields, each path cut to this many characters,
# so a body full of bad or unknown fields cannot make a large answer.
MAX_FIELD_ERRORS = 20
MAX_FIELD_PATH_LENGTH = 100
# Statuses a client may retry after waiting: their problems carry Retry-After.
RETRYABLE_STATUSES = frozenset({429, 503})
# A request path in a log line is cut to this many characters: a request line
# may be 4 KB (Gunicorn's limit), every byte of it chosen by the client.
LOGGED_PATH_LENGTH = 256


def shortened(text: str, limit: int = LOGGED_PATH_LENGTH) -> str:
    """`text` (a path) as a log line shows it: cut to `limit` characters,
    saying so and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[cut: {len(text)} characters]"


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str
    message: str
    code: str


class Problem(BaseModel):
    """An RFC 9457 problem details document."""

    model_config = ConfigDict(title="Problem")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    # The X-Request-ID of the answer (observability puts it on g).
    request_id: str | None = None


class ValidationProblem(Problem):
    """A problem document for a request whose fields failed validation."""

    model_config = ConfigDict(title="ValidationProblem")

    errors: list[FieldError]


class RequestValidationError(Exception):
    """The request's body or query string did not match its model."""

    def __init__(self, errors: list[FieldError], total: int | None = None) -> None:
        self.total = len(errors) if total is None else total
        super().__init__(f"{self.total} invalid field(s)")
        self.errors = errors


def field_errors(error: ValidationError) -> list[FieldError]:
    """Flatten pydantic's errors into field path, message and code (at most 20).

    Paths are the client's own field names and list indexes; the input values
    are left out, since a message about a value must not repeat it.
    """
    return [
        FieldError(
            field=field_path(detail["loc"]),
            message=detail["msg"],
            code=detail["type"],
        )
        for detail in error.errors(
            include_url=False, include_context=False, include_input=False
        )[:MAX_FIELD_ERRORS]
    ]


def field_path(location: tuple[str | int, ...]) -> str:
    """``("items", 0, "name")`` as ``items.0.name``, cut to a bounded length."""
    path = ".".join(str(part) for part in location) or "body"
    if len(path) > MAX_FIELD_PATH_LENGTH:
        return path[: MAX_FIELD_PATH_LENGTH - 3] + "..."
    return path


def problem_response(
    status: int,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
) -> Response:
    """Build a problem+json response for `status`.

    A 429 or 503 always says when to retry (RETRY_AFTER_UNAVAILABLE seconds,
    unless the error that caused it carries its own Retry-After).
    """
    title = title_of(status)
    request_id = g.get("request_id")
    problem: Problem
    if errors is None:
        problem = Problem(
            title=title, status=status, detail=detail, request_id=request_id
        )
    else:
        problem = ValidationProblem(
            title=title,
            status=status,
            detail=detail,
            errors=errors,
            request_id=request_id,
        )
    response = current_app.response_class(
        problem.model_dump_json(exclude_none=True),
        status=status,
        mimetype=PROBLEM_MEDIA_TYPE,
    )
    if status in RETRYABLE_STATUSES:
        response.headers["Retry-After"] = str(
            current_app.config["RETRY_AFTER_UNAVAILABLE"]
        )
    return response


def handle_http_exception(error: HTTPException) -> Response:
    """Turn abort(...) and Werkzeug's own errors into problem details."""
    status = error.code or 500
    response = problem_response(status, error.description or title_of(status))
    # Keep the headers the error carries (Allow on 405, Retry-After on 429, ...).
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def handle_validation_error(error: RequestValidationError) -> Response:
    """Answer 422 naming the invalid fields."""
    detail = "The request did not match the expected shape."
    listed = len(error.errors)
    if error.total > listed:
        detail += f" {error.total} fields are invalid; the first {listed} are listed."
    return problem_response(422, detail, errors=error.errors)


def handle_unexpected_error(error: Exception) -> Response:
    """Log the traceback server-side; tell the client nothing about it."""
    # %r: a path may hold (decoded) newlines that would forge log lines.
    current_app.logger.error(
        "Unhandled exception on %s %r",
        request.method,
        shortened(request.path),
        exc_info=error,
    )
    return problem_response(500, "The server could not complete the request.")


def title_of(status: int) -> str:
    """The reason phrase for an HTTP status."""
    return HTTP_STATUS_CODES.get(status, "Error")


def reject_invalid_request(
    _request: Any,
    _response: Any,
    error: Exception | None,
    _instance: Any,
    _model_adapter: Any,
) -> None:
    """Spectree hook: raise invalid requests into the problem handler."""
    if error is None:
        return
    if isinstance(error, ValidationError):
        raise RequestValidationError(field_errors(error), error.error_count())
    raise error


def reject_invalid_response(
    _request: Any,
    _response: Any,
    error: Exception | None,
    _instance: Any,
    _model_adapter: Any,
) -> None:
    """Spectree hook: a response that breaks its own schema is a server bug."""
    if error is not None:
        raise RuntimeError("response did not match its documented schema") from error


def register_error_handlers(app: Flask) -> None:
    """Install the problem-details handlers on `app`."""
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(RequestValidationError, handle_validation_error)
    app.register_error_handler(Exception, handle_unexpected_error)
