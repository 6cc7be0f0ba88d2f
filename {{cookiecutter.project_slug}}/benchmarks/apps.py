"""The apps the benchmark compares, each started by Gunicorn with gunicorn.conf.py.

- ``bare()``: plain Flask, one view returning the constant JSON body.
- ``stack()``: this service's create_app(), with the same body served by a view
  decorated exactly as the shipped views are (``protected`` and spectree's
  request and response validation), behind every hook the app installs.
- ``unobserved()``: the stack without the observability request hooks (the
  request id, the request's log line and its metrics), to measure their cost.
- ``unlimited()``: the stack with its rate limits off, to measure what
  counting costs (limits.py).

Both also serve ``/bench/slow``, which waits on a stand-in upstream for
BENCH_UPSTREAM_WAIT seconds (50 ms): the load the goodput figures are made with.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response
from pydantic import BaseModel

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.errors import Problem
from {{ cookiecutter.package_name }}.extensions import spec
from {{ cookiecutter.package_name }}.observability import (
    requests as request_hooks,
)
from {{ cookiecutter.package_name }}.openapi import Responses
from {{ cookiecutter.package_name }}.resilience import protected

BODY = b'{"status":"ok","service":"bench"}'
CONSTANT = "/bench/constant"
SLOW = "/bench/slow"


def upstream_wait() -> float:
    return float(os.environ.get("BENCH_UPSTREAM_WAIT", "0.05"))


class Status(BaseModel):
    """The constant answer."""

    status: str
    service: str


def bare() -> Flask:
    """Flask with nothing added: the reference."""
    app = Flask(__name__)

    @app.get(CONSTANT)
    def constant() -> Response:
        return Response(BODY, mimetype="application/json")

    @app.get(SLOW)
    def slow() -> Response:
        time.sleep(upstream_wait())
        return Response(BODY, mimetype="application/json")

    return app


def stack() -> Flask:
    """The service as configured by the environment, plus the benchmark views."""
    app = create_app()
    bench_bp = Blueprint("bench", __name__)
    responses = Responses(HTTP_200=Status, HTTP_429=Problem, HTTP_503=Problem)

    @bench_bp.get(CONSTANT)
    @protected("read")
    @spec.validate(resp=responses, tags=["bench"], operation_id="bench_constant")
    def constant() -> Status:
        return Status(status="ok", service="bench")

    @bench_bp.get(SLOW)
    @protected("read")
    @spec.validate(resp=responses, tags=["bench"], operation_id="bench_slow")
    def slow() -> Status:
        time.sleep(upstream_wait())
        return Status(status="ok", service="bench")

    app.register_blueprint(bench_bp)
    return app


def unobserved() -> Flask:
    """The stack without its request id, request log line and request metrics.

    Served with METRICS_ENABLED=false and LOG_LEVEL=WARNING too (run.py), so
    that nothing else counts or writes a line per request either.
    """
    app = stack()
    app.before_request_funcs[None].remove(request_hooks.start)
    app.after_request_funcs[None].remove(request_hooks.finish)
    app.teardown_request_funcs[None].remove(request_hooks.forget)
    return app


def unlimited() -> Flask:
    """The stack counting no request against a rate limit."""
    app = stack()
    app.config["RATE_LIMITS_ENABLED"] = False
    return app
