"""The shared state store: Redis when REDIS_URL is set, else this process's memory.

One connection pool serves the limiter, the breakers, the idempotency keys and
the cache. A `RedisGate` tracks whether Redis is answering: after a failure,
callers skip Redis (and use their in-memory fallback) for a cool-down that
doubles up to a minute, so a dead Redis costs one timeout now and then, not one
per request; the outage is logged once when it starts (saying what fails closed
meanwhile) and once when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

import redis
from flask import Flask

EXTENSION_KEY = "redis"
FIRST_COOL_DOWN = 1.0
LONGEST_COOL_DOWN = 60.0

logger = logging.getLogger(__name__)


class RedisGate:
    """Whether to try Redis now; shared by the threads of a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._cool_down = FIRST_COOL_DOWN
        self.down = False
        # What else an outage means, for its warning: each part that refuses
        # rather than fall back adds a note (the rate limits of sign-in).
        self.meanwhile: list[str] = []

    def is_open(self) -> bool:
        """True unless Redis failed recently (its cool-down has not passed)."""
        return not self.down or time.monotonic() >= self._retry_at

    def failed(self, error: Exception) -> None:
        """Record a failed call: start (or extend) the cool-down."""
        with self._lock:
            if not self.down:
                logger.warning(
                    "Redis is unreachable (%s): falling back to process memory "
                    "until it answers again%s",
                    type(error).__name__,
                    "".join(f"; {note}" for note in self.meanwhile),
                )
                self._cool_down = FIRST_COOL_DOWN
            else:
                self._cool_down = min(self._cool_down * 2, LONGEST_COOL_DOWN)
            self.down = True
            self._retry_at = time.monotonic() + self._cool_down

    def succeeded(self) -> None:
        """Record a successful call: the outage, if any, is over."""
        if self.down:
            with self._lock:
                if self.down:
                    self.down = False
                    logger.warning("Redis answers again: using it again")


def connection_pool(url: str, timeout: float) -> redis.ConnectionPool:
    """Connections to `url`, none opened yet (tests without a Redis swap this)."""
    # Short socket timeouts: a hung Redis must not hold a request for long.
    return redis.ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=30,
    )


class RedisStore:
    """A Redis client for REDIS_URL, its key prefix and its gate."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        self.url = url
        self.prefix = prefix
        self.pool = connection_pool(url, timeout)
        self.client = redis.Redis(connection_pool=self.pool)
        self.gate = RedisGate()

    def key(self, *parts: str) -> str:
        """A key under this service's prefix: ``prefix:part:part``."""
        return ":".join((self.prefix, *parts))

    # Typed access to the few commands used here (redis-py types its sync
    # client's answers as "maybe awaitable").
    def get(self, key: str) -> bytes | None:
        return cast("bytes | None", self.client.get(key))

    def set(
        self, key: str, value: str | int | float, *, ttl: int | None = None
    ) -> bool:
        return bool(self.client.set(key, value, ex=ttl))

    def reserve(self, key: str, value: str, *, ttl: int) -> bool:
        """SET NX: True when the key was free and now holds `value`."""
        return bool(self.client.set(key, value, nx=True, ex=ttl))

    def incr(self, key: str) -> int:
        return cast("int", self.client.incr(key))

    def delete(self, key: str) -> None:
        self.client.delete(key)


def init_app(app: Flask) -> RedisStore | None:
    """Connect (lazily: nothing is sent yet) to REDIS_URL, when it is set."""
    url = app.config["REDIS_URL"]
    store = (
        RedisStore(url, app.config["REDIS_KEY_PREFIX"], app.config["REDIS_TIMEOUT"])
        if url
        else None
    )
    app.extensions[EXTENSION_KEY] = store
    return store


def redis_store(app: Flask) -> RedisStore | None:
    """The app's Redis store, or None when it keeps its state in memory."""
    store: RedisStore | None = app.extensions.get(EXTENSION_KEY)
    return store
