"""The OpenAPI 3.1 document and the interactive docs that read it.

Swagger UI's files come from the swagger-ui-py package and are served by this
blueprint, so the docs work offline and behind a strict firewall (no CDN). Only
the two files the page loads are served, under a versioned URL that browsers
may cache for a year. API_DOCS_ENABLED=false turns all of it off.
"""

from __future__ import annotations

import copy
from importlib.metadata import version
from importlib.resources import files
from typing import Any

from flask import Blueprint, Response, abort, current_app, send_from_directory, url_for
from markupsafe import escape

from ..extensions import spec

SWAGGER_UI_ASSETS = str(files("swagger_ui").joinpath("static"))
# Part of every asset URL: an upgrade changes the URLs, so caches never go stale.
SWAGGER_UI_VERSION = version("swagger-ui-py")
# What the docs page loads. The package also ships editor bundles, source maps
# and an OAuth redirect page; none of them is served.
DOCS_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js"})
ASSET_MAX_AGE = 365 * 24 * 60 * 60

docs_bp = Blueprint("docs", __name__)

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
# validatorUrl: null stops Swagger UI from sending the document to a public
# validator service.
DOCS_INIT = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
  });
});
"""


@docs_bp.before_request
def require_docs_enabled() -> None:
    """Answer 404 for every docs URL when API_DOCS_ENABLED is off."""
    if not current_app.config["API_DOCS_ENABLED"]:
        abort(404)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document spectree builds, with 422 only where there is input.

    spectree adds a 422 to every operation; it is dropped from operations that
    take no body, query string or header parameter, since nothing there can
    fail validation.
    """
    cache = current_app.extensions.setdefault("openapi_document", {})
    if "document" not in cache:
        document = copy.deepcopy(spec.spec)
        for operations in document["paths"].values():
            for operation in operations.values():
                takes_input = "requestBody" in operation or any(
                    parameter["in"] in {"query", "header"}
                    for parameter in operation["parameters"]
                )
                if not takes_input:
                    operation["responses"].pop("422", None)
        cache["document"] = document
    return cache["document"]  # type: ignore[no-any-return]


@docs_bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """Serve the OpenAPI document."""
    return openapi_document()


@docs_bp.get("/docs")
def docs() -> str:
    """Serve the interactive API documentation."""
    return DOCS_PAGE.format(
        title=escape(spec.config.title),
        stylesheet=asset_url("swagger-ui.css"),
        spec_url=url_for(".openapi_json"),
        bundle=asset_url("swagger-ui-bundle.js"),
        init=url_for(".docs_init"),
    )


@docs_bp.get("/docs/init.js")
def docs_init() -> Response:
    """The script that starts Swagger UI on the docs page."""
    return current_app.response_class(DOCS_INIT, mimetype="text/javascript")


def asset_url(name: str) -> str:
    return url_for(".docs_asset", release=SWAGGER_UI_VERSION, name=name)


@docs_bp.get("/docs/assets/<release>/<name>")
def docs_asset(release: str, name: str) -> Response:
    """Serve one of Swagger UI's files, cacheable for a year."""
    if release != SWAGGER_UI_VERSION or name not in DOCS_ASSETS:
        abort(404)
    response = send_from_directory(SWAGGER_UI_ASSETS, name, max_age=ASSET_MAX_AGE)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response
