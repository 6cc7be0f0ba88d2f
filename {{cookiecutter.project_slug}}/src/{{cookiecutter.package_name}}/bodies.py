"""Request and response bodies: one size limit, complete bodies, strict JSON.

- Every body over MAX_CONTENT_LENGTH is a 413, including chunked bodies, which
  Werkzeug would otherwise cut short at the limit and pass on as if complete.
- A body shorter than its Content-Length, or with broken chunked framing, is a
  400: servers that decode the stream themselves (Gunicorn) would otherwise
  hand over what arrived before the client stopped.
- The whole body is read before the request takes an in-flight slot
  (resilience/backpressure.py), so a slow upload holds none.
- Compressed bodies are refused (415): nothing here decompresses them.
- JSON objects may not repeat a member (``{"a": 1, "a": 2}`` is refused, not
  "last one wins") nor have more than MAX_JSON_OBJECT_MEMBERS members;
  numbers may not have more than MAX_JSON_NUMBER_DIGITS digits nor overflow,
  and NaN and Infinity (which Python's parser accepts) are refused.
- A 204 or 304 answer, or an empty OPTIONS answer, carries no Content-Type.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any, NoReturn

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from werkzeug import exceptions
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

# Keys quoted back to the client in an error are cut to this length.
MAX_QUOTED_KEY_LENGTH = 40
# Far beyond any quantity or id; Python refuses to parse 4300+ digits anyway.
MAX_JSON_NUMBER_DIGITS = 100
NO_CONTENT_STATUSES = frozenset({204, 304})
IDENTITY_CODINGS = frozenset({"", "identity"})

Pairs = list[tuple[str, Any]]


class JSONBodyError(ValueError):
    """The body is valid JSON, but not JSON this service accepts."""


def strict_object_hook(max_members: int) -> Callable[[Pairs], dict[str, Any]]:
    """A ``json.loads`` object_pairs_hook refusing repeated and excess members."""

    def build(pairs: Pairs) -> dict[str, Any]:
        if len(pairs) > max_members:
            raise JSONBodyError(
                f"A JSON object in the body has more than {max_members} members."
            )
        members: dict[str, Any] = {}
        for key, value in pairs:
            if key in members:
                raise JSONBodyError(
                    "A JSON object in the body repeats the member "
                    f"{key[:MAX_QUOTED_KEY_LENGTH]!r}."
                )
            members[key] = value
        return members

    return build


def bounded_int(digits: str) -> int:
    """A ``json.loads`` parse_int refusing numbers too long to mean anything."""
    if len(digits.lstrip("-")) > MAX_JSON_NUMBER_DIGITS:
        raise JSONBodyError(
            f"A number in the body has more than {MAX_JSON_NUMBER_DIGITS} digits."
        )
    return int(digits)


def bounded_float(text: str) -> float:
    """A ``json.loads`` parse_float: at most so many digits, and a finite value."""
    if sum(char.isdigit() for char in text) > MAX_JSON_NUMBER_DIGITS:
        raise JSONBodyError(
            f"A number in the body has more than {MAX_JSON_NUMBER_DIGITS} digits."
        )
    value = float(text)
    if not math.isfinite(value):
        raise JSONBodyError("A number in the body is too large.")
    return value


def no_constant(name: str) -> NoReturn:
    """A ``json.loads`` parse_constant: NaN and Infinity are not JSON."""
    raise JSONBodyError(f"{name} is not a JSON value.")


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, parsing request bodies with `strict_object_hook`."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        # Callers with hooks of their own (Flask's tagged session serializer
        # passes object_hook) parse their own data as they always did.
        if "object_hook" not in kwargs and "object_pairs_hook" not in kwargs:
            limit = self._app.config["MAX_JSON_OBJECT_MEMBERS"]
            kwargs["object_pairs_hook"] = strict_object_hook(limit)
            kwargs["parse_int"] = bounded_int
            kwargs["parse_float"] = bounded_float
            kwargs["parse_constant"] = no_constant
        return json.loads(s, **kwargs)


def read_whole_body() -> None:
    """Check the body's size, framing and coding before any view runs.

    A body over MAX_CONTENT_LENGTH is a 413, whether or not a view would read
    it. The body is read here, whole, before the request takes an in-flight
    slot (backpressure's hook runs after this one), so that a client sending
    it slowly holds no slot: up to its Content-Length, or, when the server
    decodes the stream itself (``wsgi.input_terminated``: Gunicorn, Werkzeug's
    chunked support), up to one byte past the limit; it is checked and handed
    on whole.
    """
    environ = request.environ
    if (
        not environ.get("CONTENT_LENGTH")
        and "HTTP_TRANSFER_ENCODING" not in environ
        and "HTTP_CONTENT_ENCODING" not in environ
    ):
        return  # no body, the common case of GET: nothing to look at
    codings = request.headers.get("Content-Encoding", "").strip().lower()
    if codings not in IDENTITY_CODINGS:
        raise UnsupportedMediaType("Send the request body uncompressed.")
    limit = request.max_content_length
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        raise RequestEntityTooLarge
    if not environ.get("wsgi.input_terminated"):
        # Werkzeug bounds such a stream by Content-Length itself, and reads a
        # body without one as empty; the body is read here all the same.
        if not length:
            return
        wanted: int | None = length
    else:
        transfer = request.headers.get("Transfer-Encoding", "").strip().lower()
        if transfer not in {"", "chunked"}:
            raise exceptions.NotImplemented(
                "Only the chunked transfer coding is supported."
            )
        if length is None and not transfer:
            return  # no body
        wanted = length
        if wanted is None and limit is not None:
            wanted = limit + 1
    try:
        body = environ["wsgi.input"].read(-1 if wanted is None else wanted)
    except Exception:  # noqa: BLE001 - each server reports broken framing its own way
        raise BadRequest("The request body's framing is broken.") from None
    if length is not None and len(body) < length:
        raise BadRequest("The request body is shorter than its Content-Length.")
    if limit is not None and len(body) > limit:
        raise RequestEntityTooLarge
    environ["wsgi.input"] = io.BytesIO(body)


def drop_content_type_of_empty_answers(response: Response) -> Response:
    """A 204, a 304 or an empty OPTIONS answer has no body, so no Content-Type."""
    if response.status_code in NO_CONTENT_STATUSES or (
        request.method == "OPTIONS" and response.calculate_content_length() == 0
    ):
        response.headers.pop("Content-Type", None)
    return response


def init_app(app: Flask) -> None:
    """Parse JSON strictly and enforce the body limit on every request."""
    app.json = StrictJSONProvider(app)
    app.before_request(read_whole_body)
    app.after_request(drop_content_type_of_empty_answers)


def json_body_problem(error: BaseException) -> str | None:
    """Why the strict parser refused a body, when it is behind `error`."""
    link: BaseException | None = error
    while link is not None:
        if isinstance(link, JSONBodyError):
            return str(link)
        link = link.__cause__ or link.__context__
    return None
