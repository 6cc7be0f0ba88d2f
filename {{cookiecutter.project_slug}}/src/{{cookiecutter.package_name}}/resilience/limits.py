"""Rate limits: whose quota a request uses, how it counts, and the RateLimit headers.

Every request counts once against one policy, before its view runs: the
view's own (``protected(name)``), else ``default`` (RATELIMIT_DEFAULT), which
also takes OPTIONS requests answered without a view and paths no route
serves. Only blueprints marked ``exempt`` (the probes) are left out. Views
may count a request again against another policy and identity with
``enforce`` (sign-in counts each attempt against the account it names too).

Windows are fixed and aligned to the clock, so a count alone gives the
remaining quota and the reset time. With Redis (REDIS_URL) every request is
one call of a Lua script that counts it in all of its windows at once: one
round trip, and an exact count however many workers and replicas share the
Redis. Without Redis, counts live in process memory (right for one process).
While Redis does not answer, policies count in memory too (each worker on
its own, so their limits multiply by the number of workers) except those
that fail closed (sign-in and sign-up, whose limits stand between a guesser
and a password): those answer 503 until Redis answers again. The outage's
one warning line says so.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple

import redis
from flask import Blueprint, Flask, Response, current_app, request
from limits import parse_many
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from . import events
from .queueing import note_refused
from .store import RedisStore
from .views import routed_view

EXTENSION_KEY = "policy_limits"
# The function that names the user whose quota a request uses (auth/
# registers it).
OWNER_KEY = "quota_owner"
# The limit the RateLimit headers describe, kept in the WSGI environ (per
# request, unlike ``g``, which a test's app context shares between requests).
STATE_KEY = f"{__package__}.rate_limit_state"
# The policy of requests whose view has none of its own.
DEFAULT_POLICY = "default"
# What protected() marks its views with: the name of their policy.
POLICY_ATTRIBUTE = "resilience_policy"
# What exempt() marks a blueprint with.
EXEMPT_ATTRIBUTE = "rate_limits_exempt"

# Counts a request in each of its windows (KEYS, with their lifetimes in
# seconds as ARGV, in the same order) and returns the new counts. A window's
# first hit sets its expiry. A script runs atomically: no other client's
# increment comes between the INCR and the EXPIRE, or between two windows.
COUNT_SCRIPT = """
local counts = {}
for index, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then
    redis.call('EXPIRE', key, ARGV[index])
  end
  counts[index] = count
end
return counts
"""


def quota_identity() -> str:
    """Whose quota a request uses: its verified caller's user, else its address.

    A user's API keys, tokens and session share one quota, so that making more
    keys does not multiply it, and one scope of idempotency keys, so that a
    retry with a refreshed token or another key finds its first request. A
    credential that fails verification is never used: a client could send a
    new one with every request for a fresh quota. The address is the peer's,
    or the one the trusted proxies report (TRUSTED_PROXIES); X-Forwarded-For
    from anyone else is ignored.
    """
    owner: Callable[[], str | None] | None = current_app.extensions.get(OWNER_KEY)
    identity = owner() if owner is not None else None
    return identity or client_address()


def client_address() -> str:
    """The client's address as an identity: what sign-in attempts count against,
    whatever credential they carry (a caller may make many)."""
    return f"ip:{request.remote_addr or 'unknown'}"


def identify_clients(app: Flask, owner: Callable[[], str | None]) -> None:
    """Name the user whose quota each of `app`'s requests uses with `owner`,
    which answers None for an anonymous request."""
    app.extensions[OWNER_KEY] = owner


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


class LimitsUnavailable(ServiceUnavailable):
    """503: a policy that fails closed cannot be counted where every worker
    counts (Redis does not answer); Retry-After is RETRY_AFTER_UNAVAILABLE."""

    def __init__(self) -> None:
        super().__init__(
            "The rate limit of this request cannot be checked right now; "
            "try again shortly."
        )


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


class WindowCounter:
    """Hits per window key: in Redis while it answers, else in process memory."""

    def __init__(self, store: RedisStore | None) -> None:
        self.store = store
        self.memory = MemoryCounter()
        self.script = (
            store.client.register_script(COUNT_SCRIPT) if store is not None else None
        )

    def count(
        self, windows: Sequence[tuple[str, int]], *, fail_closed: bool = False
    ) -> list[int]:
        """Add one to each (key, lifetime in seconds) of `windows`; the new counts.

        In one round trip with Redis. While Redis does not answer: in memory,
        or LimitsUnavailable when the policy must `fail_closed`.
        """
        store, script = self.store, self.script
        if store is None or script is None:
            return [self.memory.incr(key, expiry) for key, expiry in windows]
        gate = store.gate
        if gate.is_open():
            try:
                counts = script(
                    keys=[store.key("limits", key) for key, _ in windows],
                    args=[expiry for _, expiry in windows],
                )
            except redis.RedisError as error:
                gate.failed(error)
            else:
                gate.succeeded()
                return [int(count) for count in counts]
        if fail_closed:
            raise LimitsUnavailable
        return [self.memory.incr(key, expiry) for key, expiry in windows]


class Window(NamedTuple):
    """One limit of a policy: `amount` hits per `seconds`."""

    amount: int
    seconds: int


class Policy(NamedTuple):
    """A policy's limits, parsed once, and what it does while Redis is away."""

    windows: tuple[Window, ...]
    fail_closed: bool


class PolicyLimits:
    """The parsed limits of every policy, and the counter they share."""

    def __init__(
        self,
        limits: Mapping[str, str],
        store: RedisStore | None,
        fail_closed: Collection[str] = (),
    ) -> None:
        self.counter = WindowCounter(store)
        self.policies = {
            name: Policy(
                tuple(
                    Window(item.amount, item.get_expiry())
                    for item in (parse_many(limit) if limit else ())
                ),
                name in fail_closed,
            )
            for name, limit in limits.items()
        }

    def hit(self, policy: str, identity: str, now: float) -> LimitState | None:
        """Count a request of `identity` against `policy`; the state to tell:
        of the limits it exceeds, the one that resets last (Retry-After must
        not send the client back into a refusal), else the one with the least
        left.

        Windows start at multiples of their length since the epoch, so every
        worker agrees on them and the reset time needs no second query.
        """
        chosen = self.policies[policy]
        if not chosen.windows:
            return None
        scope = scope_of(identity)
        numbers = [int(now // window.seconds) for window in chosen.windows]
        counts = self.counter.count(
            [
                # One second more than the window: the key outlives its end.
                (f"{policy}:{amount}/{seconds}:{scope}:{number}", seconds + 1)
                for (amount, seconds), number in zip(
                    chosen.windows, numbers, strict=True
                )
            ],
            fail_closed=chosen.fail_closed,
        )
        states = [
            LimitState(
                amount=amount,
                window=seconds,
                remaining=amount - count,
                reset=max(1, math.ceil((number + 1) * seconds - now)),
            )
            for (amount, seconds), number, count in zip(
                chosen.windows, numbers, counts, strict=True
            )
        ]
        if len(states) == 1:
            return states[0]
        if exceeded := [state for state in states if state.exceeded]:
            return max(exceeded, key=lambda state: state.reset)
        return min(states, key=lambda state: state.remaining)


def enforce(policy: str, identity: str | None = None) -> None:
    """Count this request against `policy`; 429 when it is over the limit.

    `identity` counts it for someone else than the caller's quota: the
    sign-in views also count each attempt against the account it names.
    """
    if not current_app.config["RATE_LIMITS_ENABLED"]:
        return
    limits: PolicyLimits = current_app.extensions[EXTENSION_KEY]
    state = limits.hit(policy, identity or quota_identity(), time.time())
    if state is None:
        return
    environ = request.environ
    if state.exceeded:
        # The RateLimit headers describe the limit that refused the request.
        environ[STATE_KEY] = state
        events.report(events.rate_limited, policy=policy)
        note_refused()  # not one of Gunicorn's max_requests
        raise TooManyRequests(
            f"Rate limit exceeded: {state.amount} per {state.window} seconds.",
            retry_after=state.reset,
        )
    environ.setdefault(STATE_KEY, state)


def exempt(blueprint: Blueprint) -> Blueprint:
    """Keep a blueprint's views out of rate limits (an orchestrator's probes)."""
    setattr(blueprint, EXEMPT_ATTRIBUTE, True)
    return blueprint


def is_exempt() -> bool:
    """The request is for a view of an exempt blueprint (or one nested in it)."""
    blueprints = current_app.blueprints
    return any(
        getattr(blueprints.get(name), EXEMPT_ATTRIBUTE, False)
        for name in request.blueprints
    )


def policy_of_request() -> str:
    """The policy a request counts against: its view's, else the default.

    An OPTIONS request that Flask answers itself runs no view, and a path
    no route serves has none: both count against the default limit.
    """
    rule = request.url_rule
    if request.method == "OPTIONS" and getattr(
        rule, "provide_automatic_options", False
    ):
        return DEFAULT_POLICY
    policy: str = getattr(routed_view(), POLICY_ATTRIBUTE, DEFAULT_POLICY)
    return policy


def count_request() -> None:
    """before_request: count every request but the exempt ones, once."""
    if current_app.config["RATE_LIMITS_ENABLED"] and not is_exempt():
        enforce(policy_of_request())


def add_rate_limit_headers(response: Response) -> Response:
    """RateLimit-Limit, -Remaining, -Reset and -Policy, and Retry-After on 429.

    The names of the IETF httpapi RateLimit draft; Reset is the number of
    seconds until the current window ends.
    """
    state: LimitState | None = request.environ.get(STATE_KEY)
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


def listed(names: Collection[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    ordered = sorted(names)
    if len(ordered) < 2:
        return "".join(ordered)
    return f"{', '.join(ordered[:-1])} and {ordered[-1]}"


def init_app(
    app: Flask,
    store: RedisStore | None,
    limits: Mapping[str, str],
    fail_closed: Collection[str] = (),
) -> None:
    """Count every request against `limits` (by policy) or RATELIMIT_DEFAULT;
    the policies in `fail_closed` answer 503 while Redis does not."""
    everything = {**limits, DEFAULT_POLICY: app.config["RATELIMIT_DEFAULT"]}
    app.extensions[EXTENSION_KEY] = PolicyLimits(everything, store, fail_closed)
    app.before_request(count_request)
    app.after_request(add_rate_limit_headers)
    if store is not None and fail_closed:
        store.gate.meanwhile.append(
            f"meanwhile the {listed(fail_closed)} rate limits answer 503 (the "
            "others count in each process)"
        )
