"""Calling another service over HTTP, the way a dependency that fails should be.

- A deadline for the whole call, retries and pauses included: ``deadline`` is
  ``connect_timeout + read_timeout`` (1 s + PRICING_TIMEOUT for prices). Each
  attempt gets the time that is left (urllib3's total timeout), and a retry
  whose pause would end past the deadline is not made. So a call returns
  within the deadline (3 s by default, 1.5 s with PRICING_TIMEOUT=0.5), give
  or take a few milliseconds of scheduling; the exceptions are a host name's
  DNS lookup, which no socket timeout covers, and an upstream that trickles
  its answer, because urllib3 bounds each socket read, not the whole answer.
- Timeouts are kept within (0, 60] s: a setting such as 0, NaN or 1e20 (which
  overflows the socket's timeout) becomes the default or 60 s instead of
  failing every call (and counting against the breaker).
- Two retries at most, 0.1 s then 0.2 s apart (plus up to 0.1 s of jitter), for
  quick failures only: a connection that could not be opened (any method: the
  request never left), and for idempotent methods a dropped connection or a
  502/503/504 answer. A read timeout is never retried: retrying a slow
  upstream only makes it slower.
- A circuit breaker around each call (resilience/breakers.py): after
  `fail_max` failures in a row the calls stop for `reset_timeout` seconds and
  fail at once (BreakerOpen, a 503), then one trial call decides. A 4xx answer
  (UpstreamClientError) says the request was wrong, not that the upstream is
  down: it does not count. An answer that is not JSON, or that the caller's
  `parse` refuses, counts like a 5xx.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker
import urllib3
from flask import current_app
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import Timeout

from ..resilience import BreakerOpen, breakers_of
from ..resilience.breakers import ConcurrentBreaker

POOLS_KEY = "upstream_pools"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
RETRIES = 2
FIRST_PAUSE = 0.1  # seconds before the first retry; it doubles
JITTER = 0.1
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
LONGEST_TIMEOUT = 60.0
T = TypeVar("T")
logger = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The upstream failed: unreachable, timed out, 5xx, or an unusable answer."""


class UpstreamClientError(UpstreamError):
    """The upstream refused the request (4xx): a bug here, not an outage there."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the upstream answered {status}")
        self.status = status


def usable_timeout(seconds: float, default: float) -> float:
    """`seconds` capped at LONGEST_TIMEOUT; `default` unless it is positive."""
    try:
        value = float(seconds)  # an override may be anything
    except (TypeError, ValueError):
        return default
    if not value > 0:  # zero, negative or NaN
        return default
    return min(value, LONGEST_TIMEOUT)


def worth_retrying(method: str, outcome: urllib3.BaseHTTPResponse | HTTPError) -> bool:
    """Whether another attempt is safe and can help."""
    if isinstance(outcome, ConnectTimeoutError):
        # Refused, unresolvable or unreachable (NewConnectionError is one of
        # these): the request never left, so any method may be sent again.
        return True
    if method not in IDEMPOTENT_METHODS or isinstance(outcome, ReadTimeoutError):
        return False
    if isinstance(outcome, ProtocolError):  # the connection dropped
        return True
    return (
        isinstance(outcome, urllib3.BaseHTTPResponse)
        and outcome.status in RETRY_STATUSES
    )


@dataclass
class Upstream:
    """One upstream service: its base URL, timeouts and breaker."""

    name: str
    base_url: str
    breaker: ConcurrentBreaker
    pool: urllib3.PoolManager
    read_timeout: float = READ_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        self.read_timeout = usable_timeout(self.read_timeout, READ_TIMEOUT)
        self.connect_timeout = usable_timeout(self.connect_timeout, CONNECT_TIMEOUT)

    @property
    def deadline(self) -> float:
        """Seconds one call may take, retries and pauses included."""
        return self.connect_timeout + self.read_timeout

    def request_json(
        self, method: str, path: str, parse: Callable[[Any], T], body: Any = None
    ) -> T:
        """Send a request and return its JSON answer as `parse` makes it.

        UpstreamError if there is no usable answer: none in time, not a 200,
        not JSON, or one that `parse` refuses (with a ValueError, as pydantic's
        ValidationError is). BreakerOpen (a 503 for our own client) while the
        breaker is open, or while another call is its trial.
        """
        try:
            return self.breaker.call(lambda: self._send(method, path, parse, body))
        except pybreaker.CircuitBreakerError:
            retry_after = breakers_of().retry_after(self.name)
            raise BreakerOpen(
                self.name, retry_after or int(self.breaker.reset_timeout)
            ) from None

    def _send(self, method: str, path: str, parse: Callable[[Any], T], body: Any) -> T:
        # Parsed inside the breaker's call, so a nonsense answer counts as a failure.
        response = self._respond(method, path, body)
        if 400 <= response.status < 500:
            raise UpstreamClientError(response.status)
        if response.status != 200:
            raise UpstreamError(f"{self.name}: answered {response.status}")
        try:
            answer = response.json()
        except (ValueError, RecursionError) as error:  # RecursionError: [[[[...
            raise UpstreamError(f"{self.name}: the answer is not JSON") from error
        try:
            return parse(answer)
        except ValueError as error:
            raise UpstreamError(f"{self.name}: the answer is not valid") from error

    def _respond(self, method: str, path: str, body: Any) -> urllib3.BaseHTTPResponse:
        """The upstream's answer, after retrying quick failures within the deadline."""
        deadline = time.monotonic() + self.deadline
        for attempt in range(RETRIES + 1):
            # A sleep can overrun the deadline by a little: leave a sliver anyway.
            left = max(deadline - time.monotonic(), 0.01)
            try:
                outcome: urllib3.BaseHTTPResponse | HTTPError = self.pool.request(
                    method,
                    self.base_url.rstrip("/") + path,
                    body=None if body is None else json.dumps(body).encode(),
                    headers={
                        "Accept": "application/json",
                        "Content-Type": "application/json",
                    },
                    timeout=Timeout(
                        total=left, connect=self.connect_timeout, read=self.read_timeout
                    ),
                    retries=False,  # retried here, where the deadline is known
                    redirect=False,
                )
            except HTTPError as error:
                outcome = error
            # Jitter spreads the retries of many callers; it guards no secret.
            pause = FIRST_PAUSE * 2**attempt + random.uniform(0, JITTER)  # noqa: S311
            if (
                attempt == RETRIES
                or not worth_retrying(method, outcome)
                or time.monotonic() + pause >= deadline
            ):
                break
            logger.info(
                "%s: %s; retrying in %.2f s",
                self.name,
                type(outcome).__name__
                if isinstance(outcome, HTTPError)
                else f"answered {outcome.status}",
                pause,
            )
            time.sleep(pause)
        if isinstance(outcome, HTTPError):
            raise UpstreamError(f"{self.name}: {type(outcome).__name__}") from outcome
        return outcome


def upstream(name: str, base_url: str, read_timeout: float) -> Upstream:
    """An Upstream for `name`, guarded by the breaker of the same name.

    Its connection pool is kept per app, so keep-alive connections are reused.
    """
    pools: dict[str, urllib3.PoolManager] = current_app.extensions.setdefault(
        POOLS_KEY, {}
    )
    pool = pools.setdefault(name, urllib3.PoolManager(maxsize=10))
    return Upstream(
        name=name,
        base_url=base_url,
        breaker=breakers_of()[name],
        read_timeout=read_timeout,
        pool=pool,
    )
