"""Circuit breakers with pybreaker: a named registry, configured from config.

CIRCUIT_BREAKERS maps each name to fail_max, reset_timeout and the exceptions
that must not count as failures (an upstream's "you sent a bad request" is not
an outage). With REDIS_URL, a breaker's state is shared by every worker; while
Redis is down each process keeps its own state, and nothing fails at boot:
pybreaker's own CircuitRedisStorage writes to Redis in its constructor, so a
storage of our own (`SharedStorage`) is used instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pybreaker
import redis
from flask import Flask, current_app
from werkzeug.exceptions import ServiceUnavailable
from werkzeug.utils import import_string

from ..config import ConfigError
from .store import RedisStore

EXTENSION_KEY = "breakers"
T = TypeVar("T")
logger = logging.getLogger(__name__)


class BreakerOpen(ServiceUnavailable):
    """A 503 answered at once: the breaker is open, the upstream is not called."""

    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(
            f"The {name} service is unavailable; try again in {retry_after} s.",
            retry_after=retry_after,
        )
        self.breaker = name


class SharedStorage(pybreaker.CircuitBreakerStorage):
    """Breaker state in Redis, shared by all workers; in memory while Redis is down.

    Nothing is sent to Redis until the breaker is used, so a Redis that is down
    at boot delays nothing.
    """

    def __init__(self, name: str, store: RedisStore) -> None:
        super().__init__(name)
        self._store = store
        self._local = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)

    def _key(self, field: str) -> str:
        return self._store.key("breaker", self.name, field)

    def _call(self, remote: Callable[[RedisStore], T], local: Callable[[], T]) -> T:
        """`remote` against Redis when it is up, else (or on failure) `local`."""
        gate = self._store.gate
        if gate.is_open():
            try:
                result = remote(self._store)
            except redis.RedisError as error:
                gate.failed(error)
            else:
                gate.succeeded()
                return result
        return local()

    @property
    def state(self) -> str:
        def read(store: RedisStore) -> str:
            value = store.get(self._key("state"))
            return value.decode() if value else pybreaker.STATE_CLOSED

        return self._call(read, lambda: self._local.state)

    @state.setter
    def state(self, state: str) -> None:
        self._local.state = state
        self._call(lambda store: store.set(self._key("state"), state), lambda: None)

    def increment_counter(self) -> None:
        self._local.increment_counter()
        self._call(lambda store: store.incr(self._key("fails")), lambda: None)

    def reset_counter(self) -> None:
        self._local.reset_counter()
        self._call(lambda store: store.set(self._key("fails"), 0), lambda: None)

    def increment_success_counter(self) -> None:
        self._local.increment_success_counter()
        self._call(lambda store: store.incr(self._key("successes")), lambda: None)

    def reset_success_counter(self) -> None:
        self._local.reset_success_counter()
        self._call(lambda store: store.set(self._key("successes"), 0), lambda: None)

    @property
    def counter(self) -> int:
        return self._call(
            lambda store: int(store.get(self._key("fails")) or 0),
            lambda: self._local.counter,
        )

    @property
    def success_counter(self) -> int:
        return self._call(
            lambda store: int(store.get(self._key("successes")) or 0),
            lambda: self._local.success_counter,
        )

    @property
    def opened_at(self) -> datetime | None:
        def read(store: RedisStore) -> datetime | None:
            value = store.get(self._key("opened_at"))
            return datetime.fromtimestamp(float(value), UTC) if value else None

        return self._call(read, lambda: self._local.opened_at)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._local.opened_at = when
        self._call(
            lambda store: store.set(self._key("opened_at"), when.timestamp()),
            lambda: None,
        )


class LoggingListener(pybreaker.CircuitBreakerListener):
    """Logs every state change; metrics attach to the same hook."""

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        logger.warning(
            "circuit breaker %s: %s -> %s",
            cb.name,
            old_state.name if old_state else "new",
            new_state.name,
        )


@dataclass
class BreakerReport:
    """What /health/dependencies says about one breaker."""

    state: str
    failures: int
    retry_after: int | None


class Breakers:
    """The app's breakers, by name."""

    def __init__(
        self,
        settings: Mapping[str, Mapping[str, Any]],
        package: str,
        store: RedisStore | None,
    ) -> None:
        self._breakers = {
            name: build_breaker(name, options, package, store)
            for name, options in settings.items()
        }

    def __getitem__(self, name: str) -> pybreaker.CircuitBreaker:
        return self._breakers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def retry_after(self, name: str) -> int | None:
        """Seconds until an open breaker lets a trial call through, else None."""
        breaker = self._breakers[name]
        if breaker.current_state != pybreaker.STATE_OPEN:
            return None
        opened_at = breaker._state_storage.opened_at  # noqa: SLF001 - no public getter
        if opened_at is None:
            return None
        reopens = opened_at + timedelta(seconds=breaker.reset_timeout)
        remaining = (reopens - datetime.now(UTC)).total_seconds()
        return math.ceil(remaining) if remaining > 0 else None

    def check(self, name: str) -> None:
        """Answer 503 at once (BreakerOpen) while breaker `name` is open."""
        retry_after = self.retry_after(name)
        if retry_after is not None:
            raise BreakerOpen(name, retry_after)

    def report(self) -> dict[str, BreakerReport]:
        return {
            name: BreakerReport(
                state=breaker.current_state,
                failures=breaker.fail_counter,
                retry_after=self.retry_after(name),
            )
            for name, breaker in self._breakers.items()
        }


def build_breaker(
    name: str, options: Mapping[str, Any], package: str, store: RedisStore | None
) -> pybreaker.CircuitBreaker:
    """A breaker from its CIRCUIT_BREAKERS entry.

    ``exclude`` names exception classes relative to the package
    (``services.http.UpstreamClientError``): failures of those kinds do not count.
    """
    unknown = set(options) - {"fail_max", "reset_timeout", "exclude"}
    if unknown:
        raise ConfigError(
            f"CIRCUIT_BREAKERS[{name!r}] has unknown settings {sorted(unknown)}"
        )
    exclude = [
        import_string(f"{package}.{path}") for path in options.get("exclude", ())
    ]
    return pybreaker.CircuitBreaker(
        name=name,
        fail_max=int(options.get("fail_max", 5)),
        reset_timeout=float(options.get("reset_timeout", 30)),
        exclude=exclude,
        listeners=[LoggingListener()],
        state_storage=SharedStorage(name, store) if store else None,
    )


def init_app(app: Flask, store: RedisStore | None) -> Breakers:
    breakers = Breakers(app.config["CIRCUIT_BREAKERS"], app.import_name, store)
    app.extensions[EXTENSION_KEY] = breakers
    return breakers


def breakers_of(app: Flask | None = None) -> Breakers:
    """The breakers of `app` (default: the current app)."""
    found: Breakers = (app or current_app).extensions[EXTENSION_KEY]
    return found
