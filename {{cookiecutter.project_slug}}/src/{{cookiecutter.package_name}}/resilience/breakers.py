"""Circuit breakers with pybreaker: a named registry, configured from config.

CIRCUIT_BREAKERS maps each name to fail_max, reset_timeout and the exceptions
that must not count as failures (an upstream's "you sent a bad request" is not
an outage). With REDIS_URL, a breaker's state is shared by every worker; while
Redis is down each process keeps its own state, and nothing fails at boot:
pybreaker's own CircuitRedisStorage writes to Redis in its constructor, so a
storage of our own (`SharedStorage`) is used instead.

pybreaker runs the calls through a breaker one at a time, holding the
breaker's lock for the whole call; `ConcurrentBreaker` holds a lock only to
admit a call and to count its outcome, so calls run side by side.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NoReturn, TypeVar

import pybreaker
import redis
from flask import Flask, current_app
from werkzeug.exceptions import ServiceUnavailable
from werkzeug.utils import import_string

from ..config import ConfigError
from . import events
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


def _raise(error: BaseException) -> NoReturn:
    raise error


class ConcurrentBreaker(pybreaker.CircuitBreaker):
    """A pybreaker breaker whose calls run concurrently, not one at a time.

    A lock is held only to admit a call and to count its outcome; pybreaker's
    state objects still count failures and successes and change the state.
    While half-open, one trial call runs and the others fail at once
    (CircuitBreakerError), as when open. That is one per process: with the
    state in Redis, each worker process may run a trial of its own. An outcome
    that comes back after the state changed (a call let in before the breaker
    opened) is not counted: it says nothing about the new state.
    """

    def __init__(
        self, storage: pybreaker.CircuitBreakerStorage, **options: Any
    ) -> None:
        super().__init__(state_storage=storage, **options)
        self.storage = storage  # pybreaker's own reference is private
        self._lock_for_calls = threading.Lock()
        self._trial = False
        self._changing = threading.local()

    @property
    def changing(self) -> bool:
        """Whether this thread is changing the state now. Otherwise a state
        change the listeners hear of was made by another process (the state
        in Redis), and this one only noticed it."""
        return bool(getattr(self._changing, "active", False))

    @contextmanager
    def _change(self) -> Iterator[None]:
        self._changing.active = True
        try:
            yield
        finally:
            self._changing.active = False

    def open(self) -> bool:
        with self._change():
            return super().open()

    def half_open(self) -> None:
        with self._change():
            super().half_open()

    def close(self) -> None:
        with self._change():
            super().close()

    @property
    def trial_running(self) -> bool:
        """Whether this process's half-open trial call is still out."""
        return self._trial

    def open_for(self) -> float:
        """Seconds an open breaker stays open (0 or less: a trial may run)."""
        opened_at = self.storage.opened_at
        if opened_at is None:  # as in pybreaker: no opening time, no wait
            return 0.0
        reopens = opened_at + timedelta(seconds=self.reset_timeout)
        return (reopens - datetime.now(UTC)).total_seconds()

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call `func` unless the breaker refuses (CircuitBreakerError); count it."""
        admitted = self._admit()
        try:
            result = func(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - _count raises it again
            return self._count(admitted, partial(_raise, error))
        return self._count(admitted, lambda: result)

    def _admit(self) -> pybreaker.CircuitBreakerState:
        """The state a call is let in under, or CircuitBreakerError."""
        with self._lock_for_calls:
            state = self.state
            if state.name == pybreaker.STATE_OPEN:
                if self.open_for() > 0:
                    raise pybreaker.CircuitBreakerError("the breaker is open")
                self.half_open()
                state = self.state
            if state.name == pybreaker.STATE_HALF_OPEN:
                if self._trial:
                    raise pybreaker.CircuitBreakerError("a trial call is running")
                self._trial = True
            return state

    def _count(
        self, admitted: pybreaker.CircuitBreakerState, outcome: Callable[[], T]
    ) -> T:
        """Count `outcome` (which returns or raises what the call did), then
        return or raise it."""
        with self._lock_for_calls:
            try:
                if self.state is admitted:
                    # The one place pybreaker's state machine is driven from
                    # outside: CircuitBreakerState.call(), what pybreaker's own
                    # call() runs under its lock, counts the outcome and moves
                    # the state (open at fail_max; a trial closes or reopens),
                    # raising CircuitBreakerError when it opens. Its listeners'
                    # before_call hooks therefore run after the call, not before.
                    return admitted.call(outcome)
            finally:
                if admitted.name == pybreaker.STATE_HALF_OPEN:
                    self._trial = False
        return outcome()


class LoggingListener(pybreaker.CircuitBreakerListener):
    """Logs every state change and reports it (observability counts it)."""

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if isinstance(cb, ConcurrentBreaker) and not cb.changing:
            # Another worker changed it (and reported it): counted once.
            logger.info("circuit breaker %s is %s", cb.name, new_state.name)
            return
        logger.warning(
            "circuit breaker %s: %s -> %s",
            cb.name,
            old_state.name if old_state else "new",
            new_state.name,
        )
        events.report(events.breaker_changed, breaker=cb.name, state=new_state.name)


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

    def __getitem__(self, name: str) -> ConcurrentBreaker:
        return self._breakers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def retry_after(self, name: str) -> int | None:
        """Seconds until breaker `name` lets a call through; None if it does now."""
        breaker = self._breakers[name]
        if breaker.trial_running:
            return 1  # a trial call is out; it ends within its upstream's deadline
        if breaker.current_state != pybreaker.STATE_OPEN:
            return None
        remaining = breaker.open_for()
        return math.ceil(remaining) if remaining > 0 else None

    def check(self, name: str) -> None:
        """Answer 503 at once (BreakerOpen) while breaker `name` is open, or
        half-open with its trial call running."""
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
) -> ConcurrentBreaker:
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
    return ConcurrentBreaker(
        SharedStorage(name, store)
        if store
        else pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED),
        name=name,
        fail_max=int(options.get("fail_max", 5)),
        reset_timeout=float(options.get("reset_timeout", 30)),
        exclude=exclude,
        listeners=[LoggingListener()],
    )


def init_app(app: Flask, store: RedisStore | None) -> Breakers:
    breakers = Breakers(app.config["CIRCUIT_BREAKERS"], app.import_name, store)
    app.extensions[EXTENSION_KEY] = breakers
    return breakers


def breakers_of(app: Flask | None = None) -> Breakers:
    """The breakers of `app` (default: the current app)."""
    found: Breakers = (app or current_app).extensions[EXTENSION_KEY]
    return found
