"""Observability: structured logs, request ids and Prometheus metrics.

- ``logs``: one JSON (or console) line per event, for every logger of the
  process, with the request's context and no secret.
- ``requests``: the request id, the request's log line and its metrics.
- ``metrics``: the Prometheus metrics, shared by Gunicorn's workers.
- ``views``: /metrics, not public in production.

The resilience parts report what they refuse, replay and read from the cache
as signals (resilience/events.py); ``count_events`` turns them into metrics.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from ..resilience import events
from . import logs, metrics, requests
from .logs import configure_logging, get_logger
from .metrics import counting, current_route, metrics_of
from .requests import request_id
from .views import may_read_metrics, metrics_bp


def count_rate_limited(app: Flask, *, policy: str, **_extra: Any) -> None:
    if found := counting(app):
        found.rate_limited.labels(policy).inc()


def count_load_shed(app: Flask, *, route: str | None = None, **_extra: Any) -> None:
    """A shed request; `route` when shed before Flask saw it (no request context)."""
    if found := counting(app):
        found.load_shed.labels(route or current_route()).inc()


def count_replay(app: Flask, **_extra: Any) -> None:
    if found := counting(app):
        found.idempotent_replays.labels(current_route()).inc()


def count_breaker_change(
    app: Flask, *, breaker: str, state: str, **_extra: Any
) -> None:
    if found := counting(app):
        found.breaker_transitions.labels(breaker, state).inc()


def count_cache_lookup(app: Flask, *, hit: bool, **_extra: Any) -> None:
    if found := counting(app):
        found.cache_lookups.labels("hit" if hit else "miss").inc()


def count_events() -> None:
    """Count the resilience signals of every app whose metrics are on."""
    for signal, receiver in (
        (events.rate_limited, count_rate_limited),
        (events.load_shed, count_load_shed),
        (events.idempotent_replay, count_replay),
        (events.breaker_changed, count_breaker_change),
        (events.cache_lookup, count_cache_lookup),
    ):
        signal.connect(receiver)


def init_app(app: Flask) -> None:
    """Logs first (everything after may log), then request hooks and metrics."""
    config = app.config
    configure_logging(config["LOG_LEVEL"], config["LOG_FORMAT"])
    logs.remember_secrets(logs.secrets_of(config))
    metrics.init_app(app)
    requests.init_app(app)
    count_events()
    if config["METRICS_ENABLED"]:
        app.register_blueprint(metrics_bp)


__all__ = [
    "configure_logging",
    "counting",
    "get_logger",
    "init_app",
    "may_read_metrics",
    "metrics_of",
    "request_id",
]
