"""`protected(name)`: a named resilience policy on a view, in one line.

RESILIENCE_POLICIES in config.py defines each policy: a rate limit (and
whether it fails closed while Redis is away), a circuit breaker whose opening
answers 503 at once, and idempotency keys for unsafe methods. Backpressure
applies to every view already (backpressure.py).

    @items_bp.post("")
    @protected("write")
    @spec.validate(...)
    def create_item(json: ItemCreate) -> ...:
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec

from flask import Flask, Response, current_app, make_response, request
from flask.typing import ResponseReturnValue
from limits import parse_many

from ..config import ConfigError
from . import events, idempotency
from .breakers import breakers_of
from .limits import DEFAULT_POLICY, POLICY_ATTRIBUTE

EXTENSION_KEY = "resilience_policies"
# The checks a view's guards declare (auth's require(): a verified caller, its
# scope, its role), run before an idempotency key is looked up, so that a
# stored answer is replayed only to a caller the view itself would let in.
PRECONDITIONS_ATTRIBUTE = "resilience_preconditions"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]


@dataclass(frozen=True)
class Policy:
    """What protected(name) applies."""

    limit: str = ""
    # With Redis: while it does not answer, refuse (503) rather than let each
    # worker count on its own (for limits that stand between a guesser and a
    # password: the limits of sign-in and sign-up).
    fail_closed: bool = False
    breaker: str | None = None
    idempotency: bool = False


def load_policies(settings: Mapping[str, Mapping[str, Any]]) -> dict[str, Policy]:
    """Parse RESILIENCE_POLICIES, failing at start-up on a bad entry."""
    policies = {}
    for name, options in settings.items():
        if name == DEFAULT_POLICY:
            raise ConfigError(
                f"RESILIENCE_POLICIES[{name!r}]: the name is the policy of views "
                "without one, whose limit is RATELIMIT_DEFAULT; choose another"
            )
        unknown = set(options) - {"limit", "fail_closed", "breaker", "idempotency"}
        if unknown:
            raise ConfigError(
                f"RESILIENCE_POLICIES[{name!r}] has unknown settings {sorted(unknown)}"
            )
        policy = Policy(**options)
        try:
            if policy.limit:
                parse_many(policy.limit)
        except ValueError:
            raise ConfigError(
                f"RESILIENCE_POLICIES[{name!r}] limit {policy.limit!r} is not a rate "
                "limit (for example: 30 per minute)"
            ) from None
        policies[name] = policy
    return policies


def policy(name: str) -> Policy:
    found: Policy = current_app.extensions[EXTENSION_KEY][name]
    return found


def preconditions(view: Callable[..., Any]) -> tuple[Callable[[], None], ...]:
    """The checks `view` declared with add_precondition (through its wrappers)."""
    found: tuple[Callable[[], None], ...] = getattr(view, PRECONDITIONS_ATTRIBUTE, ())
    return found


def add_precondition(view: Callable[..., Any], check: Callable[[], None]) -> None:
    """Declare that `view` answers only requests that pass `check` (which raises
    an HTTP error otherwise): protected() runs it before replaying an answer."""
    setattr(view, PRECONDITIONS_ATTRIBUTE, (*preconditions(view), check))


def protected(name: str) -> Callable[[View[P]], View[P]]:
    """Apply policy `name`: its limit, then its breaker, then idempotency.

    The limit is counted before the request reaches the view (limits.py counts
    every request against its view's policy), so replays and refusals count
    too; the view is left out of the default limit (it has its own). A request
    with an idempotency key must pass the view's preconditions (require()'s
    scope and role) before a stored answer is looked up: checks made inside the
    view's body do not guard a replay.
    """

    def decorate(view: View[P]) -> View[P]:
        @functools.wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            chosen = policy(name)
            if chosen.breaker:
                breakers_of().check(chosen.breaker)
            if chosen.idempotency and request.method in UNSAFE_METHODS:
                key = request.headers.get(idempotency.HEADER)
                if key is not None:
                    for check in preconditions(view):
                        check()
                    return run_once(key, lambda: view(*args, **kwargs))
            return view(*args, **kwargs)

        setattr(guarded, POLICY_ATTRIBUTE, name)
        return guarded

    return decorate


def run_once(key: str, call: Callable[[], ResponseReturnValue]) -> Response:
    """Run `call` once for this idempotency key, or replay or refuse."""
    keys: idempotency.IdempotencyKeys = current_app.extensions[
        idempotency.EXTENSION_KEY
    ]
    reservation = idempotency.begin(keys, key)
    if reservation.decision == "replay":
        events.report(events.idempotent_replay)
        return idempotency.replay(reservation.record)
    if reservation.decision != "run":
        idempotency.refuse(reservation)
    try:
        response = make_response(call())
    except BaseException:
        keys.drop(reservation.key)
        raise
    idempotency.finish(keys, reservation, response)
    return response


def init_app(app: Flask, policies: dict[str, Policy]) -> None:
    breakers = breakers_of(app)
    for name, chosen in policies.items():
        if chosen.breaker and chosen.breaker not in breakers:
            raise ConfigError(
                f"RESILIENCE_POLICIES[{name!r}] names breaker {chosen.breaker!r}, "
                "which CIRCUIT_BREAKERS does not define"
            )
    app.extensions[EXTENSION_KEY] = policies
