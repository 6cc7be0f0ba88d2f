"""Resilience: rate limits, circuit breakers, backpressure, idempotency keys, cache.

Zero infrastructure by default: all state lives in process memory. One
variable, REDIS_URL, moves the limiter, the breaker state, the idempotency keys
and the cache to Redis together, so that several workers share them (Gunicorn
refuses to start several workers without it: see gunicorn.conf.py).

Views opt in with one decorator, ``@protected("policy")``; every view gets
backpressure; blueprints marked with ``exempt`` (the health probes) get neither.
"""

from __future__ import annotations

from flask import Blueprint, Flask

from ..extensions import cache
from . import backpressure, breakers, idempotency, limits, protect, store
from .breakers import BreakerOpen, breakers_of
from .idempotency import IdempotencyKeyHeader
from .limits import limiter
from .protect import protected
from .store import redis_store

# Blueprints whose views are neither limited nor shed (see `exempt`).
EXEMPT: set[str] = set()


def exempt(blueprint: Blueprint) -> Blueprint:
    """Keep a blueprint's views out of rate limits and load shedding (probes)."""
    limiter.exempt(blueprint)
    EXEMPT.add(blueprint.name)
    return blueprint


def init_app(app: Flask) -> None:
    """Wire every part to the app, on Redis when REDIS_URL is set."""
    shared = store.init_app(app)
    policies = protect.load_policies(app.config["RESILIENCE_POLICIES"])
    backpressure.init_app(app, EXEMPT)
    limits.init_app(
        app, shared, {name: policy.limit for name, policy in policies.items()}
    )
    breakers.init_app(app, shared)
    idempotency.init_app(app, shared)
    protect.init_app(app, policies)
    cache.init_app(app)


__all__ = [
    "BreakerOpen",
    "IdempotencyKeyHeader",
    "breakers_of",
    "exempt",
    "init_app",
    "limiter",
    "protected",
    "redis_store",
]
