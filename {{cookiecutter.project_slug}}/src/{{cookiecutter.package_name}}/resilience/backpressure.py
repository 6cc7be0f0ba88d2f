"""Backpressure: at most MAX_IN_FLIGHT requests at once per worker process.

Beyond the bound the app sheds load at once, with 503 and Retry-After, instead
of queueing requests until clients time out. The default leaves one of
Gunicorn's threads free, so that liveness and shed answers go out even while
every admitted request waits on a stuck backend. Views marked ``never_shed``
(liveness: it touches no backend) take no slot; everything else does, the
readiness probe included, so that probes cannot hold every thread either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, g
from werkzeug.exceptions import ServiceUnavailable

from . import events
from .views import routed_view

EXTENSION_KEY = "backpressure"
ADMITTED = "backpressure_admitted"
# What never_shed marks a view with.
NEVER_SHED_ATTRIBUTE = "never_shed"
F = TypeVar("F", bound=Callable[..., object])
logger = logging.getLogger(__name__)


def never_shed(view: F) -> F:
    """Serve `view` even at the bound, taking no slot: only for views that touch
    no backend and answer at once (liveness)."""
    setattr(view, NEVER_SHED_ATTRIBUTE, True)
    return view


class LoadShed(ServiceUnavailable):
    """A 503 answered at once: the worker is at its in-flight bound."""

    def __init__(self) -> None:
        super().__init__(
            "The server is at capacity; try again in a moment.", retry_after=1
        )


class InFlight:
    """A counter of admitted requests with a hard upper bound.

    A plain lock and counter: a semaphore (a condition variable, in Python)
    costs several times more, and nothing here ever waits for a slot.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.shed = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.active < self.limit:
                self.active += 1
                return True
            self.shed += 1
            return False

    def leave(self) -> None:
        with self._lock:
            if self.active <= 0:
                raise RuntimeError("left more slots than were taken")
            self.active -= 1


def admit(in_flight: InFlight) -> None:
    """before_request: take a slot, or shed the request."""
    if getattr(routed_view(), NEVER_SHED_ATTRIBUTE, False):
        return
    if not in_flight.try_enter():
        events.report(events.load_shed)
        raise LoadShed
    g.setdefault(ADMITTED, in_flight)


def release(_error: BaseException | None) -> None:
    """teardown_request: give the slot back, however the request ended."""
    in_flight: InFlight | None = g.pop(ADMITTED, None)
    if in_flight is not None:
        in_flight.leave()


def init_app(app: Flask) -> InFlight:
    """Bound the app's in-flight requests (views marked never_shed excepted)."""
    in_flight = InFlight(app.config["MAX_IN_FLIGHT"])
    app.extensions[EXTENSION_KEY] = in_flight
    app.before_request(lambda: admit(in_flight))
    app.teardown_request(release)
    return in_flight
