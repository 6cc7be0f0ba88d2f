"""Rate limits with Flask-Limiter: who the client is, where counters live, headers.

Counters live in Redis when REDIS_URL is set, else in process memory. When
Redis stops answering, Flask-Limiter counts in memory instead (logging one
warning), and moves back once Redis answers its periodic check.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit

from .store import RedisStore

# Set by the authentication layer once a request's credentials are verified
# ("user:<id>" or "key:<prefix>"). An unverified API key header is never used:
# a client could send a new one with every request to get a fresh quota.
IDENTITY_KEY = "client_identity"


def client_identity() -> str:
    """Who a request counts against: its verified identity, else its address.

    The address is the peer's, or the one the trusted proxies report
    (TRUSTED_PROXIES); X-Forwarded-For from anyone else is ignored.
    """
    identity: str | None = g.get(IDENTITY_KEY)
    return identity or f"ip:{request.remote_addr or 'unknown'}"


def scope_of(identity: str) -> str:
    """A short, stable, non-reversible form of an identity, for storage keys."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def default_limit() -> str:
    """RATELIMIT_DEFAULT of the app at hand.

    Read per request: Flask-Limiter keeps the first app's defaults otherwise,
    and one process may build several apps (the test suite does).
    """
    limit: str = current_app.config["RATELIMIT_DEFAULT"]
    return limit


def limits_disabled() -> bool:
    """RATE_LIMITS_ENABLED is off for the app at hand (the test suite's default)."""
    return not current_app.config["RATE_LIMITS_ENABLED"]


limiter = Limiter(
    key_func=client_identity,
    default_limits=[default_limit],
    # A Redis outage must not fail requests: count in memory meanwhile.
    in_memory_fallback_enabled=True,
    swallow_errors=True,
    # The RateLimit headers are written by add_rate_limit_headers below.
    headers_enabled=False,
)
limiter.request_filter(limits_disabled)


def storage_settings(app: Flask, store: RedisStore | None) -> None:
    """Point Flask-Limiter at the shared Redis pool, or at process memory."""
    if store is None:
        app.config["RATELIMIT_STORAGE_URI"] = "memory://"
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {}
        return
    app.config["RATELIMIT_STORAGE_URI"] = store.url
    app.config["RATELIMIT_STORAGE_OPTIONS"] = {
        "connection_pool": store.pool,
        "key_prefix": store.key("limits"),
    }


def add_rate_limit_headers(response: Response) -> Response:
    """RateLimit-Limit, -Remaining and -Reset (seconds), and Retry-After on 429.

    The names of the IETF httpapi RateLimit draft; Reset is the number of
    seconds until the current window ends.
    """
    current: RequestLimit | None = limiter.current_limit
    if current is None:
        return response
    window = current.limit.get_expiry()
    seconds = min(window, max(0, math.ceil(current.reset_at - time.time())))
    response.headers["RateLimit-Limit"] = str(current.limit.amount)
    response.headers["RateLimit-Remaining"] = str(max(0, current.remaining))
    response.headers["RateLimit-Reset"] = str(seconds)
    response.headers["RateLimit-Policy"] = f"{current.limit.amount};w={window}"
    if response.status_code == 429:
        response.headers["Retry-After"] = str(max(1, seconds))
    return response


def init_app(app: Flask, store: RedisStore | None) -> None:
    storage_settings(app, store)
    limiter.init_app(app)
    app.after_request(add_rate_limit_headers)
