"""Security headers on every response, URLs that mean one thing, cheap sessions.

``SECURITY_HEADERS`` in config.py holds the headers: a Content-Security-Policy
without 'unsafe-inline', nosniff, no framing, no referrer, and HSTS in
production. A view that needs a different value sets the header itself; it is
not overwritten.

Each resource has one URL, so a cache or a path rule in a proxy in front means
what it says: ``/api//v1`` is not redirected (Werkzeug's redirect would put the
client's Host header into Location), an encoded slash (``/api/v1%2Fitems``) is
a 404, and ``<int:...>`` takes ASCII digits without leading zeros only.

With TRUSTED_HOSTS set, a request for another Host is a 400, except the health
probes: an orchestrator calls them by the pod's address (``ProbeHost``).

Sessions are Flask's signed cookies; a request without a session cookie gets
an empty session without building a signer (see ``SessionInterface``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from flask import Flask, Request, Response, abort, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# Where the health blueprint is mounted.
PROBE_PREFIX = "/health/"


class CanonicalIntConverter(IntegerConverter):
    """Werkzeug's ``int``, written one way only.

    The stock converter also takes ``0001`` and digits of other scripts
    (Arabic-Indic, fullwidth). At most 18 digits: longer can be no id, and
    Python refuses to read 4300+ digits.
    """

    regex = r"(?:0|[1-9][0-9]{0,17})"


def security_headers(configured: Mapping[str, str]) -> Callable[[Response], Response]:
    """An after_request hook adding each of `configured` a response lacks.

    One pass over the response's headers, instead of one per configured header.
    """
    wanted = [(name, name.lower(), value) for name, value in configured.items()]

    def add_security_headers(response: Response) -> Response:
        headers = response.headers
        present = {name.lower() for name in headers.keys()}  # noqa: SIM118 - Headers
        for name, lowered, value in wanted:
            if lowered not in present:
                headers.add(name, value)
        return response

    return add_security_headers


class ProbeHost:
    """WSGI middleware: health probes pass Flask's TRUSTED_HOSTS check.

    Kubernetes and most load balancers probe a pod by its IP address, which no
    TRUSTED_HOSTS list names. A probe builds no URL from its Host, so it is
    given the first trusted name instead; every other request is checked.
    """

    def __init__(self, app: WSGIApplication, trusted_hosts: list[str]) -> None:
        self.app = app
        self.host = trusted_hosts[0].lstrip(".")

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(PROBE_PREFIX):
            environ["HTTP_HOST"] = self.host
        return self.app(environ, start_response)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, opened without a signer when no cookie came.

    Flask builds the signer for every request; most API requests carry no
    session cookie, and a new empty session needs none.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and (
            "HTTP_COOKIE" not in request.environ
            or self.get_cookie_name(app) not in request.cookies
        ):
            return self.session_class()
        return super().open_session(app, request)


def refuse_encoded_slashes() -> None:
    """404 for a path that spells a slash as %2F."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
    if "%2f" in raw.split("?", 1)[0].lower():
        abort(404)


def init_app(app: Flask) -> None:
    """Register before the blueprints: the converter applies to rules added later.

    With TRUSTED_PROXIES=n, the client address and scheme come from the last n
    entries of X-Forwarded-For and X-Forwarded-Proto (what those proxies
    appended); with 0, those headers are ignored, as anyone can send them.
    """
    if trusted_hosts := app.config["TRUSTED_HOSTS"]:
        app.wsgi_app = ProbeHost(app.wsgi_app, trusted_hosts)  # type: ignore[method-assign]
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies
        )
    app.url_map.converters["int"] = CanonicalIntConverter
    app.url_map.merge_slashes = False
    app.session_interface = SessionInterface()
    app.before_request(refuse_encoded_slashes)
    app.after_request(security_headers(app.config["SECURITY_HEADERS"]))
    if origins := app.config["CORS_ORIGINS"]:
        allow_cross_origin(app, origins)


# What a browser script on another origin may send to, and read from, the API.
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-API-Key"]
CORS_RESPONSE_HEADERS = [
    "Location",
    "Retry-After",
    "Idempotent-Replayed",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
]


def allow_cross_origin(app: Flask, origins: list[str]) -> None:
    """Let scripts from `origins` call the JSON API (only /api/), never with cookies.

    The API authenticates by header (bearer token, API key), so no request
    needs credentials, and ``*`` (any origin) grants nothing a cookie would.
    """
    CORS(
        app,
        resources={r"/api/*": {"origins": origins}},
        supports_credentials=False,
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_RESPONSE_HEADERS,
        max_age=600,
    )
