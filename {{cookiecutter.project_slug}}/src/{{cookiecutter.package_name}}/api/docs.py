"""The OpenAPI 3.1 document and the interactive docs that read it.

Swagger UI's files come from the swagger-ui-py package and are served by this
blueprint, so the docs work offline and behind a strict firewall (no CDN).
"""

from __future__ import annotations

import copy
from importlib.resources import files
from typing import Any

from flask import Blueprint, Response, current_app, url_for
from markupsafe import escape

from ..errors import PROBLEM_MEDIA_TYPE
from ..extensions import spec

SWAGGER_UI_ASSETS = str(files("swagger_ui").joinpath("static"))
PROBLEM_SCHEMAS = (
    "#/components/schemas/Problem",
    "#/components/schemas/ValidationProblem",
)

docs_bp = Blueprint(
    "docs",
    __name__,
    static_folder=SWAGGER_UI_ASSETS,
    static_url_path="/docs/assets",
)

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="{stylesheet}">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec_url}"></div>
  <script src="{bundle}"></script>
  <script src="{init}"></script>
</body>
</html>
"""

# Kept out of the page so a Content-Security-Policy without 'unsafe-inline' works.
DOCS_INIT = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
  });
});
"""


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document spectree builds, adjusted to what the API really does.

    Problem responses are declared as application/problem+json, and the 422 that
    spectree adds to every operation is kept only where there is input to reject.
    """
    cache = current_app.extensions.setdefault("openapi_document", {})
    if "document" not in cache:
        document = copy.deepcopy(spec.spec)
        for operations in document["paths"].values():
            for operation in operations.values():
                adjust_operation(operation)
        cache["document"] = document
    return cache["document"]  # type: ignore[no-any-return]


def adjust_operation(operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    takes_input = "requestBody" in operation or any(
        parameter["in"] == "query" for parameter in operation["parameters"]
    )
    if not takes_input:
        responses.pop("422", None)
    for response in responses.values():
        content = response.get("content", {})
        body = content.get("application/json")
        if body and body["schema"].get("$ref") in PROBLEM_SCHEMAS:
            content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")


@docs_bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """Serve the OpenAPI document."""
    return openapi_document()


@docs_bp.get("/docs")
def docs() -> str:
    """Serve the interactive API documentation."""
    return DOCS_PAGE.format(
        title=escape(spec.config.title),
        stylesheet=url_for(".static", filename="swagger-ui.css"),
        spec_url=url_for(".openapi_json"),
        bundle=url_for(".static", filename="swagger-ui-bundle.js"),
        init=url_for(".docs_init"),
    )


@docs_bp.get("/docs/init.js")
def docs_init() -> Response:
    """The script that starts Swagger UI on the docs page."""
    return current_app.response_class(DOCS_INIT, mimetype="text/javascript")
