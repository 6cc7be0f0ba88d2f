"""What the OpenAPI document says about responses, and how spectree validates.

``Responses`` is spectree's ``Response`` with two additions, so the document
describes what the API really sends:

- problem documents (``errors.Problem`` and its subclasses) are declared as
  ``application/problem+json``, which is how errors.py sends them;
- response headers: those a view names (``Location`` on a 201), Retry-After on
  every 429 and 503 problem, which errors.py always adds, the RateLimit fields
  on every answer of an operation that can answer 429 (it is rate limited),
  and ``Idempotent-Replayed`` on the successes of operations that take an
  ``Idempotency-Key`` (``replayable=True``).

``ValidatingPlugin`` is spectree's Flask plugin, minus work for nothing: a view
that declares no query, body, header or cookie model does not have them
parsed and copied on every request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from spectree import Response, SecurityScheme, SecuritySchemeData
from spectree.models import InType, SecureType
from spectree.plugins.base import Context
from spectree.plugins.flask_plugin import FlaskPlugin
from spectree.utils import get_model_key

from .errors import PROBLEM_MEDIA_TYPE, RETRYABLE_STATUSES, Problem

Header = dict[str, Any]

LOCATION: Header = {
    "description": "The URL of the resource the request created.",
    "schema": {"type": "string", "format": "uri-reference"},
}
RETRY_AFTER: Header = {
    "description": "Seconds to wait before retrying the request.",
    "schema": {"type": "integer", "minimum": 0},
}
# The IETF httpapi RateLimit draft's fields, sent by every rate-limited answer.
RATE_LIMIT: dict[str, Header] = {
    "RateLimit-Limit": {
        "description": "Requests allowed in the current window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Remaining": {
        "description": "Requests left in the current window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the current window ends.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Policy": {
        "description": "The limit and its window in seconds, as 10;w=60.",
        "schema": {"type": "string"},
    },
}


WWW_AUTHENTICATE: Header = {
    "description": (
        'How to authenticate: a bearer token (error="invalid_token" when the '
        "one sent was refused) or an API key."
    ),
    "schema": {"type": "string"},
}
# The credentials an operation with security=AUTHENTICATED accepts.
BEARER_SCHEME = "bearerAuth"
API_KEY_SCHEME = "apiKeyAuth"
AUTHENTICATED: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}, {API_KEY_SCHEME: []}]
SECURITY_SCHEMES = [
    SecurityScheme(
        name=BEARER_SCHEME,
        data=SecuritySchemeData(
            type=SecureType.HTTP,
            scheme="bearer",
            bearer_format="JWT",
            description="An access token from POST /api/v1/auth/token.",
        ),
    ),
    SecurityScheme(
        name=API_KEY_SCHEME,
        data=SecuritySchemeData(
            type=SecureType.API_KEY,
            name="X-API-Key",
            field_in=InType.HEADER,
            description="An API key from POST /api/v1/auth/api-keys.",
        ),
    ),
]

REPLAYED: Header = {
    "description": (
        "Present (true) when this is the stored answer to an earlier request "
        "with the same Idempotency-Key."
    ),
    "schema": {"type": "string", "enum": ["true"]},
}


class Responses(Response):
    """spectree's Response, with problem media types and response headers."""

    def __init__(
        self,
        *codes: str,
        headers: Mapping[int, Mapping[str, Header]] | None = None,
        replayable: bool = False,
        **code_models: Any,
    ) -> None:
        super().__init__(*codes, **code_models)
        self.headers = {
            str(code): dict(named) for code, named in (headers or {}).items()
        }
        self.replayable = replayable

    def generate_spec(
        self, naming_strategy: Callable[[Any], str] = get_model_key
    ) -> dict[str, Any]:
        responses = super().generate_spec(naming_strategy)
        for code, model in self.code_models.items():
            if isinstance(model, type) and issubclass(model, Problem):
                content = responses[code.removeprefix("HTTP_")]["content"]
                content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
        rate_limited = "429" in responses
        for status, response in responses.items():
            headers = dict(self.headers.get(status, {}))
            is_problem = PROBLEM_MEDIA_TYPE in response.get("content", {})
            if is_problem and int(status) in RETRYABLE_STATUSES:
                headers.setdefault("Retry-After", RETRY_AFTER)
            if rate_limited:
                headers = {**RATE_LIMIT, **headers}
            if status == "401":
                headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
            if self.replayable and status.startswith("2"):
                headers["Idempotent-Replayed"] = REPLAYED
            if headers:
                response["headers"] = headers
        return responses


class ValidatingPlugin(FlaskPlugin):
    """spectree's Flask plugin, skipping request parsing where nothing is validated."""

    def request_validation(  # noqa: PLR0913, PLR0917 - spectree's signature
        self,
        request: Any,
        query: Any,
        json: Any,
        form: Any,
        headers: Any,
        cookies: Any,
    ) -> None:
        if query or json or form or headers or cookies:
            super().request_validation(  # type: ignore[no-untyped-call]
                request, query, json, form, headers, cookies
            )
        else:
            request.context = Context(None, None, None, None, None)
