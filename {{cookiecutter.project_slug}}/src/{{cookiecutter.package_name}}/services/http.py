"""Calling another service over HTTP, the way a dependency that fails should be.

- Connect and read timeouts on every call: a slow upstream costs seconds, not
  a worker thread for good.
- Retries with exponential backoff and jitter, for connection failures and
  502/503/504 answers, and only for idempotent methods: a POST is retried only
  when it never reached the upstream (the connection could not be opened).
- A circuit breaker around each call: after `fail_max` failures in a row the
  calls stop for `reset_timeout` seconds and fail at once (BreakerOpen, a 503),
  then one trial call decides. A 4xx answer (UpstreamClientError) says the
  request was wrong, not that the upstream is down: it does not count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pybreaker
import urllib3
from flask import current_app
from urllib3.util import Retry, Timeout

from ..resilience import BreakerOpen, breakers_of

POOLS_KEY = "upstream_pools"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})


class UpstreamError(Exception):
    """The upstream failed: unreachable, timed out, 5xx, or an unreadable answer."""


class UpstreamClientError(UpstreamError):
    """The upstream refused the request (4xx): a bug here, not an outage there."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the upstream answered {status}")
        self.status = status


def retry_policy(method: str) -> Retry:
    """Two retries, 0.1 s then 0.2 s apart (plus up to 0.1 s of jitter)."""
    return Retry(
        total=2,
        connect=2,
        read=2 if method in IDEMPOTENT_METHODS else 0,
        status=2 if method in IDEMPOTENT_METHODS else 0,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=IDEMPOTENT_METHODS,
        backoff_factor=0.1,
        backoff_jitter=0.1,
        raise_on_status=False,
    )


@dataclass
class Upstream:
    """One upstream service: its base URL, timeouts and breaker."""

    name: str
    base_url: str
    breaker: pybreaker.CircuitBreaker
    pool: urllib3.PoolManager
    read_timeout: float = 2.0
    connect_timeout: float = 1.0

    def request_json(self, method: str, path: str, body: Any = None) -> Any:
        """Send a request and return its JSON answer; raise UpstreamError if none.

        BreakerOpen (a 503 for our own client) while the breaker is open.
        """
        try:
            return self.breaker.call(self._send, method, path, body)
        except pybreaker.CircuitBreakerError:
            retry_after = breakers_of().retry_after(self.name)
            raise BreakerOpen(
                self.name, retry_after or int(self.breaker.reset_timeout)
            ) from None

    def _send(self, method: str, path: str, body: Any) -> Any:
        try:
            response = self.pool.request(
                method,
                self.base_url.rstrip("/") + path,
                body=None if body is None else json.dumps(body).encode(),
                headers={
                    "Accept": "application/json",
                    "Content-Type": "application/json",
                },
                timeout=Timeout(connect=self.connect_timeout, read=self.read_timeout),
                retries=retry_policy(method),
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise UpstreamError(f"{self.name}: {type(error).__name__}") from error
        if 400 <= response.status < 500:
            raise UpstreamClientError(response.status)
        if response.status != 200:
            raise UpstreamError(f"{self.name}: answered {response.status}")
        try:
            return response.json()
        except ValueError as error:
            raise UpstreamError(f"{self.name}: the answer is not JSON") from error


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
