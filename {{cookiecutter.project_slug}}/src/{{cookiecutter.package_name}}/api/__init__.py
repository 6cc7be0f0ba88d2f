"""The JSON API: versioned resources under /api/v1, the OpenAPI document and docs."""

from __future__ import annotations

from flask import Blueprint, request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from ..auth.api import auth_api_bp
from ..bodies import json_body_problem
from .docs import docs_bp
from .items import items_bp

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


api_bp = Blueprint("api", __name__, url_prefix="/api")
api_bp.register_blueprint(items_bp)
api_bp.register_blueprint(auth_api_bp)
api_bp.register_blueprint(docs_bp)


@api_bp.before_request
def require_json_object() -> None:
    """Refuse bodies that are not a JSON object before any view runs."""
    if request.method not in BODY_METHODS:
        return
    if not request.is_json:
        raise UnsupportedMediaType(
            "Send the request body as JSON with Content-Type: application/json."
        )
    try:
        body = request.get_json()
    except BadRequest as error:
        reason = json_body_problem(error) or "The request body is not valid JSON."
        raise BadRequest(reason) from None
    except RecursionError:
        # json.loads gives up on deep nesting ([[[[...) with RecursionError.
        raise BadRequest("The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")


__all__ = ["api_bp"]
