"""Per request: an id, a log context, one log line and the request metrics.

The id is the client's X-Request-ID when it looks like an identifier, else a
new one; it is echoed in the response's X-Request-ID, carried by every log
line of the request and by its problem documents (``g.request_id``), and sent
with the tasks the request queues.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import structlog
from flask import Flask, Response, current_app, g, request
from sqlalchemy import inspect

from ..auth import known_principal
from ..errors import shortened
from .logs import get_logger
from .metrics import counting, current_route, method_of

HEADER = "X-Request-ID"
# An incoming id is kept only when it is short and plain (no spaces, quotes or
# control characters that could forge or break a log line).
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ENVIRON_KEY = f"{__package__}.request_id"
STARTED_KEY = f"{__package__}.started"
# Probes and scrapes arrive every few seconds: their lines are DEBUG, unless
# they failed (a refused scrape, a service that is not ready).
QUIET_PATHS = frozenset(
    {"/metrics", "/health/live", "/health/ready", "/health/startup"}
)

log = get_logger(f"{__package__}.requests")


def request_id() -> str:
    """The current request's id: a sane X-Request-ID, else one made up once."""
    known: str | None = request.environ.get(ENVIRON_KEY)
    if known is None:
        incoming = request.headers.get(HEADER, "")
        known = incoming if SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        request.environ[ENVIRON_KEY] = known
    return known


def start() -> None:
    """before_request (the first one): the id, the clock and the log context."""
    request.environ[STARTED_KEY] = time.perf_counter()
    identifier = request_id()
    g.request_id = identifier
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=identifier,
        method=request.method,
        route=current_route(),
    )


def finish(response: Response) -> Response:
    """after_request (the last one): echo the id, count, and write the line."""
    identifier = request_id()
    response.headers[HEADER] = identifier
    started = request.environ.get(STARTED_KEY)
    duration = time.perf_counter() - started if started is not None else 0.0
    route = current_route()
    status = response.status_code
    if metrics := counting(current_app):
        method = method_of(request.method)
        metrics.requests.labels(method, route, status).inc()
        metrics.latency.labels(method, route, status).observe(duration)
    level = logging.DEBUG if quiet(request.path, status) else logging.INFO
    log.log(
        level,
        "request",
        # The path without its query string, which may carry a credential, and
        # cut: a client chooses its length.
        path=shortened(request.path),
        status=status,
        duration_ms=round(duration * 1000, 3),
        user_id=known_user_id(),
    )
    return response


def known_user_id() -> Any:
    """The verified caller's user id, read without a query.

    After a failed transaction the user row is expired, and reading its
    attributes would query the database again: its identity does not.
    """
    principal = known_principal()
    if principal is None:
        return None
    identity = inspect(principal.user).identity
    return identity[0] if identity else None


def quiet(path: str, status: int) -> bool:
    return path in QUIET_PATHS and status < 400


def forget(_error: BaseException | None) -> None:
    """teardown_request: the thread's next request starts a clean context."""
    structlog.contextvars.clear_contextvars()


def init_app(app: Flask) -> None:
    """Register the hooks: start first, finish last, whatever others add."""
    app.before_request_funcs.setdefault(None, []).insert(0, start)
    # after_request hooks run in reverse order of registration: the first runs last.
    app.after_request_funcs.setdefault(None, []).insert(0, finish)
    app.teardown_request(forget)
