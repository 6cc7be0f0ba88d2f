"""The view a request is routed to, looked up once per request.

Backpressure and the limits ask about it three or four times a request (is
it never shed, does it have a policy of its own); each lookup goes through
Flask's context-local proxies, so the answer is kept in the WSGI environ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, request

ENVIRON_KEY = "resilience.view"


def routed_view() -> Callable[..., Any] | None:
    """The view function of the current request; None when nothing matched."""
    environ = request.environ
    if ENVIRON_KEY not in environ:
        environ[ENVIRON_KEY] = current_app.view_functions.get(request.endpoint or "")
    view: Callable[..., Any] | None = environ[ENVIRON_KEY]
    return view
