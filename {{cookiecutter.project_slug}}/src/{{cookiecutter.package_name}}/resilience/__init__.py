"""Resilience: rate limits, circuit breakers, backpressure, idempotency keys, cache.

Zero infrastructure by default: all state lives in process memory. One
variable, REDIS_URL, moves the limiter, the breaker state, the idempotency keys
and the cache to Redis together, so that several workers share them (Gunicorn
refuses to start several workers without it: see gunicorn.conf.py).

Views opt in with one decorator, ``@protected("policy")``; every other request
counts against RATELIMIT_DEFAULT; every view gets backpressure except those
marked ``never_shed``; blueprints marked with ``exempt`` (the health probes)
get no rate limit.
"""

from __future__ import annotations

from flask import Flask

from ..extensions import cache
from . import backpressure, breakers, idempotency, limits, protect, store
from .backpressure import LoadShed, never_shed, overloaded
from .breakers import BreakerOpen, breakers_of
from .idempotency import IdempotencyKeyHeader
from .limits import client_address, enforce, exempt, identify_clients
from .protect import protected
from .store import redis_store


def init_app(app: Flask) -> None:
    """Wire every part to the app, on Redis when REDIS_URL is set."""
    shared = store.init_app(app)
    policies = protect.load_policies(app.config["RESILIENCE_POLICIES"])
    limits.init_app(
        app,
        shared,
        {name: policy.limit for name, policy in policies.items()},
        fail_closed={name for name, policy in policies.items() if policy.fail_closed},
    )
    breakers.init_app(app, shared)
    idempotency.init_app(app, shared)
    protect.init_app(app, policies)
    cache.init_app(app)


def shed_load(app: Flask) -> None:
    """Backpressure: the factory's last step, so that a request takes its slot
    after every other before_request hook has let it through."""
    backpressure.init_app(app)


__all__ = [
    "BreakerOpen",
    "IdempotencyKeyHeader",
    "LoadShed",
    "breakers_of",
    "client_address",
    "enforce",
    "exempt",
    "identify_clients",
    "init_app",
    "never_shed",
    "overloaded",
    "protected",
    "redis_store",
    "shed_load",
]
