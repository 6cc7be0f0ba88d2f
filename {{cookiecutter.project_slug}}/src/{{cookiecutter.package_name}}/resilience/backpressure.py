"""Backpressure: shed the requests a worker cannot serve in time, not the ones
that merely arrive together.

Each worker process runs at most MAX_IN_FLIGHT requests at once: one fewer
than Gunicorn's threads by default, so that a thread stays free to answer
probes and refusals while every admitted request waits on a stuck backend. A
request that finds every slot taken waits for one. How long a request may
wait, counting the time it queued for a thread before the app saw it
(queueing.py), is its budget, and the budget depends on the worker's state:

- Keeping up: REQUEST_QUEUE_TIMEOUT (250 ms). Bursts, and clients that send
  their next request when the last is answered, queue briefly and are served.
- Overloaded, from the moment a request outwaits that budget, for a second,
  and for one more each second in which at least 1 in 20 requests was shed:
  REQUEST_QUEUE_TARGET (10 ms). The queue stays short, so the requests
  admitted are answered about as fast as on an idle worker and the excess
  gets a 503 at once, instead of every client waiting until it times out.
  Queueing delay, not concurrency, says when to shed (CoDel's idea); the two
  budgets are those of the "adaptive LIFO and CoDel" servers, with a FIFO
  queue.

A request whose budget is spent before the app sees it gets a 503 made in
advance (``EarlyShed``), far cheaper than a request through Flask, so that
shedding the excess of twice the capacity leaves the worker to the admitted
requests; shed requests are counted (``load_shed``), and each overload is
logged once, when it starts.

One client address holds at most MAX_IN_FLIGHT_PER_CLIENT slots (all but one
by default), so that one client cannot take them all. A request over its
client's share is that client's own excess, not the worker's: it may wait for
one of its client's requests to end, but only while nobody else waits (for a
slot, or for a thread: queueing.queued), and it gets a 429 (``BUSY``) at once
otherwise; it is never counted as shed and never makes the worker overloaded,
so that one client's burst cannot shed other clients or fail readiness. Such
a client stays "over its share" for OVERLOAD_HOLD after its last excess
request. Its requests also fill the queue for a thread, where the others
wait behind them: so while some client is over its share, a request that
outwaited its budget there is that client's 429 if it is one of its own, and
is let on to take a free slot if it is another client's, rather than shed
with the flood. (The proxy in front bounds how much of that queue one
address can fill: deploy/nginx.conf caps the requests in progress per
address.) Requests refused at once are left out of Gunicorn's max_requests
count (queueing.note_refused).

A request takes its slot in the app's last
before_request hook, once its body has arrived and its rate limit has let it
through: a slow upload or a 429 holds no slot. Views marked ``never_shed``
(the probes, /metrics) take no slot and are never shed; static files take
no slot either (they are shed before routing like any other request).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, TypeVar

from flask import Flask, request
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests
from werkzeug.http import parse_list_header

from ..errors import PROBLEM_MEDIA_TYPE
from . import events
from .limits import client_address
from .queueing import note_refused, queued, take_queue_wait
from .views import routed_view

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

EXTENSION_KEY = "backpressure"
# Where a request keeps what it waited before the app saw it, and its slot.
QUEUE_WAIT_KEY = f"{__package__}.queue_wait"
SLOT_KEY = f"{__package__}.slot"
# What never_shed marks a view with.
NEVER_SHED_ATTRIBUTE = "never_shed"
# Seconds an overload lasts, and lasts again while the worker sheds at least
# this share of the requests it decides on.
OVERLOAD_HOLD = 1.0
STAY_SHARE = 0.05
RETRY_AFTER = 1
AT_CAPACITY = "The server is at capacity; try again in a moment."
CLIENT_BUSY = (
    "Too many requests from this client are in progress at once; "
    "try again when one has been answered."
)
# The policy label of those refusals (rate_limit_rejections_total{policy=...}).
IN_FLIGHT_POLICY = "in-flight-per-client"
# Seconds between two looks of a request over its client's share at whether
# anyone else waits (a slot given back wakes it at once).
BUSY_POLL = 0.005
# What enter() decides.
Decision = Literal["admitted", "shed", "busy"]
ADMITTED: Decision = "admitted"
SHED: Decision = "shed"
BUSY: Decision = "busy"
# The route label of requests shed before routing (load_shed{route=...}).
EARLY_ROUTE = "before-routing"
# The problem document of an early shed, with %s for its request id.
SHED_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": AT_CAPACITY,
        "request_id": "%s",
    }
).encode()
# The problem document of an early 429 for a client over its share.
BUSY_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": CLIENT_BUSY,
        "request_id": "%s",
    }
).encode()
# Clients remembered as over their share, beyond which the expired are dropped.
EXCESS_MEMORY = 1024
F = TypeVar("F", bound=Callable[..., object])
logger = logging.getLogger(__name__)


def never_shed(view: F) -> F:
    """Serve `view` whatever the load, taking no slot: only for views that
    answer at once (liveness, the cached probe results, /metrics)."""
    setattr(view, NEVER_SHED_ATTRIBUTE, True)
    return view


class LoadShed(ServiceUnavailable):
    """A 503 answered at once: the worker cannot serve the request in time."""

    def __init__(self) -> None:
        super().__init__(AT_CAPACITY, retry_after=RETRY_AFTER)


class ClientBusy(TooManyRequests):
    """A 429 answered at once: the client holds its share of the slots."""

    def __init__(self) -> None:
        super().__init__(CLIENT_BUSY, retry_after=RETRY_AFTER)


class Admission:
    """One worker's slots, and whether it is overloaded.

    Overload starts when a request is shed for outwaiting the budget of a
    worker that keeps up, and lasts OVERLOAD_HOLD; at the end of each such
    window it lasts one more while the worker shed at least STAY_SHARE of
    the requests it decided on in that window. ``clock`` is time.monotonic;
    tests set one they move by hand.
    """

    def __init__(
        self, limit: int, per_client: int, timeout: float, target: float
    ) -> None:
        self.limit = limit
        self.per_client = per_client
        self.timeout = timeout
        self.target = target
        self.hold = OVERLOAD_HOLD
        self.clock: Callable[[], float] = time.monotonic
        self.active = 0
        self.shed = 0
        # Requests refused for being over their client's share.
        self.busy = 0
        # Slots held, by client address; requests waiting for the worker's
        # room (not for their client's share), by client address.
        self.holders: dict[str, int] = {}
        self.waiting: dict[str, int] = {}
        # Until when each client that sent an excess request counts as over
        # its share, and until when some client does.
        self.excess_until: dict[str, float] = {}
        self.any_excess_until = -math.inf
        self.overloaded_until = -math.inf
        # The current window: when it ends, requests admitted and shed in it.
        self.window_end = -math.inf
        self.window_admitted = 0
        self.window_shed = 0
        self._changed = threading.Condition(threading.Lock())

    def overloaded(self) -> bool:
        """Whether the worker sheds what waits longer than `target`."""
        now = self.clock()
        if now < self.overloaded_until:
            return True
        # The window just ended and no decision has closed it yet: it carries
        # the overload on if it shed enough (what _count will decide).
        return self._carries_on(now)

    def budget(self) -> float:
        """Seconds a request may wait, in all, before it is shed."""
        return self.target if self.overloaded() else self.timeout

    def late(self, client: str, waited: float) -> Decision | None:
        """What becomes of `client`'s request that waited `waited` s for a
        thread, before the app saw it: None if within its budget, or if
        another client is over its share (it may take a free slot); BUSY if
        its own client is; SHED (counted) otherwise."""
        budget = self.budget()
        if waited <= budget:
            return None
        with self._changed:
            now = self.clock()
            if self._over_share(client, now):
                self._note_excess(client, now)
                return BUSY
            if self._anyone_over_share(now):
                return None
            began = self._count(shed=True)
        if began:
            self._log_overload(budget)
        return SHED

    def enter(self, client: str, waited: float = 0.0) -> Decision:
        """Take a slot for `client`, waiting for one within what is left of the
        budget after `waited`: ADMITTED; SHED (counted) if the worker had no
        room in time; BUSY if `client` holds its share and others wait, or
        held it until the budget was spent."""
        budget = self.budget()
        with self._changed:
            deadline = self.clock() + budget - waited
            while True:
                held = self.holders.get(client, 0)
                if held < self.per_client and self.active < self.limit:
                    self.active += 1
                    self.holders[client] = held + 1
                    self._count(shed=False)
                    return ADMITTED
                left = deadline - self.clock()
                if held >= self.per_client:
                    # Its client's own excess: it waits only while that costs
                    # nobody else a thread, and is never counted as shed.
                    if left <= 0 or self._others_wait(client):
                        self._note_excess(client, self.clock())
                        return BUSY
                    self._changed.wait(min(left, BUSY_POLL))
                    continue
                if left <= 0:
                    began = self._count(shed=True)
                    break
                self.waiting[client] = self.waiting.get(client, 0) + 1
                try:
                    self._changed.wait(left)
                finally:
                    self._stop_waiting(client)
        if began:
            self._log_overload(budget)
        return SHED

    def _others_wait(self, client: str) -> bool:
        """Whether a request of another client waits for room, or any request
        for a thread (the lock held)."""
        waiting = self.waiting
        return queued() > 0 or len(waiting) > (1 if client in waiting else 0)

    def _over_share(self, client: str, now: float) -> bool:
        """Whether `client` holds its share, or sent an excess request within
        the last OVERLOAD_HOLD (the lock held)."""
        return (
            self.holders.get(client, 0) >= self.per_client
            or self.excess_until.get(client, -math.inf) > now
        )

    def _anyone_over_share(self, now: float) -> bool:
        return now < self.any_excess_until or any(
            held >= self.per_client for held in self.holders.values()
        )

    def _note_excess(self, client: str, now: float) -> None:
        """Count a request refused as `client`'s excess (the lock held)."""
        self.busy += 1
        if len(self.excess_until) >= EXCESS_MEMORY:
            self.excess_until = {
                known: until
                for known, until in self.excess_until.items()
                if until > now
            }
        self.excess_until[client] = self.any_excess_until = now + self.hold

    def _stop_waiting(self, client: str) -> None:
        count = self.waiting[client]
        if count == 1:
            del self.waiting[client]
        else:
            self.waiting[client] = count - 1

    def leave(self, client: str) -> None:
        """Give `client`'s slot back."""
        with self._changed:
            held = self.holders.get(client, 0)
            if held <= 0:
                raise RuntimeError("left more slots than were taken")
            if held == 1:
                del self.holders[client]
            else:
                self.holders[client] = held - 1
            self.active -= 1
            self._changed.notify_all()

    def _carries_on(self, now: float) -> bool:
        """Whether an overloaded window that ended at most `hold` ago shed at
        least STAY_SHARE of the requests decided in it."""
        decided = self.window_admitted + self.window_shed
        return (
            self.overloaded_until >= self.window_end
            and self.window_end <= now < self.window_end + self.hold
            and self.window_shed > 0
            and self.window_shed >= STAY_SHARE * decided
        )

    def _count(self, *, shed: bool) -> bool:
        """Count a decision (the lock held); True if this shed starts an overload."""
        now = self.clock()
        if now >= self.window_end:
            carried = self._carries_on(now)
            # Windows follow each other, or start afresh after a quiet spell.
            follows = now < self.window_end + self.hold
            self.window_end = (self.window_end if follows else now) + self.hold
            if carried:
                self.overloaded_until = self.window_end
            self.window_admitted = self.window_shed = 0
        if not shed:
            self.window_admitted += 1
            return False
        self.shed += 1
        self.window_shed += 1
        if now < self.overloaded_until:
            return False
        # The shed that starts it is not counted in its first window.
        self.overloaded_until = self.window_end = now + self.hold
        self.window_admitted = self.window_shed = 0
        return True

    def _log_overload(self, budget: float) -> None:
        logger.warning(
            "overloaded: a request waited over %.0f ms for a thread or a slot; "
            "until fewer than 1 in %d requests are shed over %g s, requests that "
            "wait over %.0f ms are shed",
            budget * 1000,
            round(1 / STAY_SHARE),
            self.hold,
            self.target * 1000,
        )


def never_shed_paths(app: Flask) -> frozenset[str]:
    """The paths of the never_shed views without variables: /health/*, /metrics."""
    return frozenset(
        rule.rule
        for rule in app.url_map.iter_rules()
        if not rule.arguments
        and getattr(app.view_functions.get(rule.endpoint), NEVER_SHED_ATTRIBUTE, False)
    )


class EarlyShed:
    """WSGI middleware: a request that outwaited its budget before the app saw
    it gets a 503 made in advance, without the cost of a request through Flask.

    It looks at nothing but the path, so that shedding stays cheap: the never
    shed views it lets through are those at fixed paths (all of the shipped
    ones); one at a path with variables is shed here like any other view.
    """

    def __init__(self, app: Flask, admission: Admission) -> None:
        self.app = app
        self.admission = admission
        # As the app's ProxyFix reads the client address (security.py).
        self.proxies: int = app.config["TRUSTED_PROXIES"]
        self.wrapped: WSGIApplication = app.wsgi_app
        # Read at the first request: views may be added after init_app.
        self.exempt: frozenset[str] | None = None
        # Request ids: a random prefix of this app's (made in the worker
        # process) and a count: unique, and cheaper than a uuid4 each.
        self.id_prefix = uuid.uuid4().hex[:16]
        self.numbers = itertools.count()

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        waited = environ.get(QUEUE_WAIT_KEY)
        if waited is None:
            waited = environ[QUEUE_WAIT_KEY] = take_queue_wait() or 0.0
        if waited > self.admission.budget():
            if self.exempt is None:
                self.exempt = never_shed_paths(self.app)
            if environ.get("PATH_INFO") not in self.exempt:
                decision = self.admission.late(self.client(environ), waited)
                if decision is not None:
                    return self.refuse(decision, start_response)
        return self.wrapped(environ, start_response)

    def refuse(self, decision: Decision, start_response: StartResponse) -> list[bytes]:
        """The 429 of a client over its share, or the 503 of a shed request."""
        note_refused()
        request_id = f"{self.id_prefix}{next(self.numbers):x}"
        if decision == BUSY:
            events.rate_limited.send(self.app, policy=IN_FLIGHT_POLICY)
            status, template = "429 TOO MANY REQUESTS", BUSY_BODY
        else:
            events.load_shed.send(self.app, route=EARLY_ROUTE)
            status, template = "503 SERVICE UNAVAILABLE", SHED_BODY
        return early_answer(start_response, status, template, request_id)

    def client(self, environ: WSGIEnvironment) -> str:
        """The client address as client_address() will read it, once the
        app's ProxyFix has looked at X-Forwarded-For."""
        address = environ.get("REMOTE_ADDR")
        if self.proxies and (forwarded := environ.get("HTTP_X_FORWARDED_FOR")):
            values = parse_list_header(forwarded)
            if len(values) >= self.proxies:
                address = values[-self.proxies]
        return f"ip:{address or 'unknown'}"


def early_answer(
    start_response: StartResponse, status: str, template: bytes, request_id: str
) -> list[bytes]:
    """A problem document made in advance, with its request id (the app never
    saw the request's X-Request-ID)."""
    body = template % request_id.encode()
    start_response(
        status,
        [
            ("Content-Type", PROBLEM_MEDIA_TYPE),
            ("Content-Length", str(len(body))),
            ("Retry-After", str(RETRY_AFTER)),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Request-ID", request_id),
        ],
    )
    return [body]


def takes_no_slot() -> bool:
    """Whether the request is for a never_shed view or a static file (read
    from local disk at once; a browser fetches several side by side)."""
    if getattr(routed_view(), NEVER_SHED_ATTRIBUTE, False):
        return True
    endpoint = request.endpoint or ""
    return endpoint == "static" or endpoint.endswith(".static")


def admit(admission: Admission) -> None:
    """before_request, the app's last: take a slot, or shed the request."""
    if takes_no_slot():
        return
    environ = request.environ
    client = client_address()
    decision = admission.enter(client, environ.get(QUEUE_WAIT_KEY, 0.0))
    if decision == BUSY:
        note_refused()
        events.report(events.rate_limited, policy=IN_FLIGHT_POLICY)
        raise ClientBusy
    if decision == SHED:
        note_refused()
        events.report(events.load_shed)
        raise LoadShed
    environ[SLOT_KEY] = (admission, client)


def release(_error: BaseException | None) -> None:
    """teardown_request: give the slot back, however the request ended."""
    held: tuple[Admission, str] | None = request.environ.pop(SLOT_KEY, None)
    if held is not None:
        admission, client = held
        admission.leave(client)


def overloaded(app: Flask) -> bool:
    """Whether `app`'s worker is overloaded (sheds what waits over the target)."""
    admission: Admission | None = app.extensions.get(EXTENSION_KEY)
    return admission is not None and admission.overloaded()


def init_app(app: Flask) -> Admission:
    """Shed what the app cannot serve in time. Call it after every other part
    that adds before_request hooks: a request takes its slot after all of them."""
    config = app.config
    limit = config["MAX_IN_FLIGHT"]
    admission = Admission(
        limit=limit,
        per_client=config["MAX_IN_FLIGHT_PER_CLIENT"] or max(1, limit - 1),
        timeout=config["REQUEST_QUEUE_TIMEOUT"],
        target=config["REQUEST_QUEUE_TARGET"],
    )
    app.extensions[EXTENSION_KEY] = admission
    app.before_request(functools.partial(admit, admission))
    app.teardown_request(release)
    app.wsgi_app = EarlyShed(app, admission)  # type: ignore[method-assign]
    return admission
