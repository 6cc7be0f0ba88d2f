"""Rate limits: who the client is, how hits are counted, and the RateLimit headers.

Two paths, one storage choice (Redis with REDIS_URL, else process memory):

- Views guarded by ``protected(name)`` count against their policy's limit here,
  with one atomic increment per limit and request (``PolicyLimits``). The limit
  is parsed once, at start-up, and windows are aligned to the clock, so the
  counter alone gives the remaining quota and the reset time: with Redis, one
  round trip per request instead of Flask-Limiter's three, and none of its
  per-request limit resolution (see the benchmark in README.md).
- Every other view gets RATELIMIT_DEFAULT from Flask-Limiter (``limiter``),
  which also keeps probes out of limits (``limiter.exempt``). Flask-Limiter's
  decorators remain available for one-off limits.

When Redis stops answering, both paths count in process memory (each logs one
warning per outage) and move back once Redis answers again.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from werkzeug.exceptions import TooManyRequests

from . import events
from .store import RedisStore
from .views import routed_view

EXTENSION_KEY = "policy_limits"
# The function that names a request's verified caller (auth/ registers it).
IDENTIFY_KEY = "identify_client"
# The policy limit of the current request, for the RateLimit headers.
STATE_KEY = "rate_limit_state"


def client_identity() -> str:
    """Who a request counts against: its verified caller, else its address.

    A caller is whoever the function given to ``identify_clients`` names
    ("key:<prefix>" for an API key, "user:<id>" for a token), so a header
    that fails verification is never used: a client could send a new one with
    every request to get a fresh quota. The address is the peer's, or the one
    the trusted proxies report (TRUSTED_PROXIES); X-Forwarded-For from anyone
    else is ignored.
    """
    identify: Callable[[], str | None] | None = current_app.extensions.get(IDENTIFY_KEY)
    identity = identify() if identify is not None else None
    return identity or client_address()


def client_address() -> str:
    """The client's address as an identity: what sign-in attempts count against,
    whatever credential they carry (a caller may make many)."""
    return f"ip:{request.remote_addr or 'unknown'}"


def identify_clients(app: Flask, identify: Callable[[], str | None]) -> None:
    """Count `app`'s requests by what `identify` says of their caller (or None)."""
    app.extensions[IDENTIFY_KEY] = identify


@functools.lru_cache(maxsize=4096)
def scope_of(identity: str) -> str:
    """A short, stable, non-reversible form of an identity, for storage keys."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


class LimitState(NamedTuple):
    """One limit's standing after a hit: what the RateLimit headers say."""

    amount: int
    window: int
    remaining: int
    reset: int

    @property
    def exceeded(self) -> bool:
        return self.remaining < 0


class MemoryCounter:
    """Counters that expire, in this process: a dict under a lock.

    (The limits library's MemoryStorage starts a timer thread every 10 ms while
    requests come in; expired keys here are swept at most once a second.)
    """

    SWEEP_INTERVAL = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}
        self._next_sweep = 0.0

    def incr(self, key: str, expiry: int) -> int:
        """Add one to `key` (a new key lives `expiry` seconds); the new count."""
        now = time.monotonic()
        with self._lock:
            if now >= self._next_sweep:
                self._counts = {
                    name: entry
                    for name, entry in self._counts.items()
                    if entry[0] > now
                }
                self._next_sweep = now + self.SWEEP_INTERVAL
            expires, count = self._counts.get(key, (0.0, 0))
            if expires <= now:
                expires, count = now + expiry, 0
            self._counts[key] = (expires, count + 1)
            return count + 1


@dataclass
class Lease:
    """Hits of one window this worker took from Redis ahead of need."""

    expires: float
    left: int
    # The window's count in Redis when this worker last looked.
    count: int


class WindowCounter:
    """Hits per key and window, counted in Redis while it answers, else in memory.

    With Redis, a worker takes hits in leases: one INCRBY takes up to 1/64 of
    what is left of the window (at most LEASE_MAX), and the following requests
    of that client use them up without a round trip. Near the limit leases
    shrink to one hit, so the count stays exact where it matters (ten
    admitted of sixty concurrent requests to a 10-per-minute view, however
    many workers). The cost: hits a worker leased but did not use before the
    window ends are not used by others (at most 1/64 of the rest per worker).
    """

    LEASE_SHARE = 64
    LEASE_MAX = 100

    def __init__(self, store: RedisStore | None) -> None:
        self.store = store
        self.memory = MemoryCounter()
        self.redis = (
            RedisStorage(
                store.url, connection_pool=store.pool, key_prefix=store.key("limits")
            )
            if store is not None
            else None
        )
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._next_sweep = 0.0

    def take(self, key: str, expiry: int, amount: int) -> int:
        """Count one hit on `key` (a window of `expiry` seconds and `amount`
        hits); what is left of the window after it, negative once over."""
        if self.redis is not None and self.store is not None:
            gate = self.store.gate
            if gate.is_open():
                left = self._from_lease(key, amount)
                if left is not None:
                    return left
                try:
                    left = self._lease(self.redis, key, expiry, amount)
                except redis.RedisError as error:
                    gate.failed(error)
                else:
                    gate.succeeded()
                    return left
        return amount - self.memory.incr(key, expiry)

    def _from_lease(self, key: str, amount: int) -> int | None:
        """A hit from this worker's lease on `key`, if it has one left."""
        now = time.monotonic()
        with self._lock:
            if now >= self._next_sweep:
                self._leases = {
                    name: lease
                    for name, lease in self._leases.items()
                    if lease.expires > now
                }
                self._next_sweep = now + MemoryCounter.SWEEP_INTERVAL
            lease = self._leases.get(key)
            if lease is None or lease.left <= 0 or lease.expires <= now:
                return None
            lease.left -= 1
            return amount - lease.count + lease.left

    def _lease(self, storage: RedisStorage, key: str, expiry: int, amount: int) -> int:
        """One INCRBY: take a lease of hits, use one; what is left after it."""
        with self._lock:
            known = self._leases.get(key)
        seen = known.count if known is not None else 0
        size = max(1, min(self.LEASE_MAX, (amount - seen) // self.LEASE_SHARE))
        count = storage.incr(key, expiry, amount=size)
        # The hits this lease covers are count - size + 1 .. count; those
        # within the limit are granted, one of them to this request.
        granted = max(0, min(size, amount - (count - size)))
        with self._lock:
            self._leases[key] = Lease(
                expires=time.monotonic() + expiry, left=max(0, granted - 1), count=count
            )
        if granted == 0:
            return amount - count
        return amount - count + granted - 1


class PolicyLimits:
    """The parsed limits of every policy, and the counter they share."""

    def __init__(self, limits: dict[str, str], store: RedisStore | None) -> None:
        self.counter = WindowCounter(store)
        self.items: dict[str, list[RateLimitItem]] = {
            name: list(parse_many(limit)) if limit else []
            for name, limit in limits.items()
        }

    def hit(self, policy: str, identity: str, now: float) -> LimitState | None:
        """Count a request of `identity` against `policy`; the tightest state.

        Windows start at multiples of their length since the epoch, so every
        worker agrees on them and the reset time needs no second query.
        """
        tightest: LimitState | None = None
        scope = scope_of(identity)
        for item in self.items[policy]:
            window = item.get_expiry()
            number = int(now // window)
            key = f"{policy}:{item.amount}/{window}:{scope}:{number}"
            # One second more than the window: the key outlives the window's end.
            left = self.counter.take(key, window + 1, item.amount)
            state = LimitState(
                amount=item.amount,
                window=window,
                remaining=left,
                reset=max(1, math.ceil((number + 1) * window - now)),
            )
            if tightest is None or state.remaining < tightest.remaining:
                tightest = state
        return tightest


def enforce(policy: str, identity: str | None = None) -> None:
    """Count this request against `policy`; 429 when it is over the limit.

    `identity` counts it for someone else than the caller: the login views
    also count each attempt against the account it names.
    """
    if not current_app.config["RATE_LIMITS_ENABLED"]:
        return
    limits: PolicyLimits = current_app.extensions[EXTENSION_KEY]
    state = limits.hit(policy, identity or client_identity(), time.time())
    if state is None:
        return
    if state.exceeded:
        # The RateLimit headers describe the limit that refused the request.
        setattr(g, STATE_KEY, state)
        events.report(events.rate_limited, policy=policy)
        raise TooManyRequests(
            f"Rate limit exceeded: {state.amount} per {state.window} seconds.",
            retry_after=state.reset,
        )
    g.setdefault(STATE_KEY, state)


def default_limit() -> str:
    """RATELIMIT_DEFAULT of the app at hand.

    Read per request: Flask-Limiter keeps the first app's defaults otherwise,
    and one process may build several apps (the test suite does).
    """
    limit: str = current_app.config["RATELIMIT_DEFAULT"]
    return limit


def limits_disabled() -> bool:
    """Flask-Limiter's request filter: limits are off (the test suite's default)."""
    return not current_app.config["RATE_LIMITS_ENABLED"]


def has_own_limit() -> bool:
    """The view counts against its own policy (protected), or there is no view."""
    view = routed_view()
    return view is None or hasattr(view, POLICY_ATTRIBUTE)


# What protected() marks its views with: the name of their policy.
POLICY_ATTRIBUTE = "resilience_policy"


def default_limit_breached(_limit: RequestLimit) -> None:
    """Flask-Limiter refused a request (default limit or its own decorators)."""
    events.report(events.rate_limited, policy="default")


limiter = Limiter(
    key_func=client_identity,
    default_limits=[default_limit],
    on_breach=default_limit_breached,
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
    """RateLimit-Limit, -Remaining, -Reset and -Policy, and Retry-After on 429.

    The names of the IETF httpapi RateLimit draft; Reset is the number of
    seconds until the current window ends.
    """
    state: LimitState | None = g.get(STATE_KEY)
    if state is None:
        state = default_limit_state()
        if state is None:
            return response
    headers = response.headers
    # add, not set: nothing else writes these, and set scans every header.
    headers.add("RateLimit-Limit", str(state.amount))
    headers.add("RateLimit-Remaining", str(max(0, state.remaining)))
    headers.add("RateLimit-Reset", str(state.reset))
    headers.add("RateLimit-Policy", f"{state.amount};w={state.window}")
    if response.status_code == 429:
        headers["Retry-After"] = str(state.reset)
    return response


def default_limit_state() -> LimitState | None:
    """Flask-Limiter's standing for a view under the default limit, if any."""
    current: RequestLimit | None = limiter.current_limit
    if current is None:
        return None
    window = current.limit.get_expiry()
    return LimitState(
        amount=current.limit.amount,
        window=window,
        remaining=current.remaining,
        reset=max(1, min(window, math.ceil(current.reset_at - time.time()))),
    )


def step_aside(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`hook`, except for views with a limit of their own.

    There it does nothing: a before_request or teardown hook returns None, an
    after_request hook the response it was given.
    """

    @functools.wraps(hook)
    def guarded(*args: Any) -> Any:
        if has_own_limit():
            return args[0] if args else None
        return hook(*args)

    return guarded


def init_app(app: Flask, store: RedisStore | None, limits: dict[str, str]) -> None:
    """Flask-Limiter for default limits; `limits` (by policy) for protected views.

    Flask-Limiter's request hooks resolve its limits for every request, even
    where none applies: before this, most of the stack's cost in the
    benchmark. The hooks it installs step aside for protected views, which
    count against their own policy; its decorators (``limiter.limit``) and the
    default limit of every other view work as documented.
    """
    storage_settings(app, store)
    hooks: tuple[list[Any], ...] = (
        app.before_request_funcs.setdefault(None, []),
        app.after_request_funcs.setdefault(None, []),
        app.teardown_request_funcs.setdefault(None, []),
    )
    before = [len(registered) for registered in hooks]
    limiter.init_app(app)
    for registered, count in zip(hooks, before, strict=True):
        registered[count:] = [step_aside(hook) for hook in registered[count:]]
    app.extensions[EXTENSION_KEY] = PolicyLimits(limits, store)
    app.after_request(add_rate_limit_headers)
