"""Readiness: whether any worker answered lately (the ``workers`` check).

A web process serves without workers (its tasks wait in the broker), so the
check is non-critical: no answer is a warning in /health/ready, never a 503
that would take every web process out of rotation at once. Each process
remembers when a worker last answered it, and pings the workers again (a
broadcast over the broker, which every worker answers) only once that answer
is over FRESH_FOR seconds old, so probes do not flood the workers. A ping ends
at the first answer, or after half the probe's deadline (HEALTH_CHECK_TIMEOUT);
the other half is for reaching the broker (one try of a second). A ping that
no worker answered is remembered too: for SILENCE_FOR seconds the probes
report it without pinging, so an outage does not hold every probe (and the
in-flight slot it takes) for the ping's whole wait.
"""

from __future__ import annotations

import threading
import time

from celery import Celery

from ..health import HealthCheckError

# Seconds an answer counts: while workers answer, a process pings at most
# this often.
FRESH_FOR = 30.0
# Seconds an unanswered ping counts: while no worker answers, a process pings
# at most this often.
SILENCE_FOR = 10.0


class WorkerPings:
    """When a worker last answered this process; a ping when that is stale."""

    def __init__(self, celery: Celery, timeout: float) -> None:
        self.celery = celery
        self.timeout = timeout
        # time.monotonic() of the last answer; None: no worker answered yet.
        self.answered: float | None = None
        # time.monotonic() of the last ping, answered or not.
        self.pinged: float | None = None
        # One ping at a time: a probe that waits here gets the other's answer.
        self.lock = threading.Lock()

    def __call__(self) -> str:
        """How long ago a worker answered; HealthCheckError when none does now."""
        if not self.lock.acquire(timeout=self.timeout):
            raise HealthCheckError("another probe's ping of the workers is unanswered")
        try:
            if self.due():
                self.pinged = time.monotonic()
                if self.ping():
                    self.answered = time.monotonic()
            age = self.age()
        finally:
            self.lock.release()
        if age is None or age > FRESH_FOR:
            raise HealthCheckError(self.silence(age))
        return f"a worker answered {age:.0f} s ago"

    def due(self) -> bool:
        """Whether to ping: the last answer is stale, and the last ping, if it
        went unanswered, is over SILENCE_FOR seconds old."""
        age = self.age()
        if age is not None and age <= FRESH_FOR:
            return False
        if self.pinged is None:
            return True
        unanswered = self.answered is None or self.pinged > self.answered
        return not unanswered or time.monotonic() - self.pinged >= SILENCE_FOR

    def age(self) -> float | None:
        """Seconds since a worker last answered, None if none has."""
        if self.answered is None:
            return None
        return time.monotonic() - self.answered

    def ping(self) -> bool:
        """A worker answers a ping within the timeout."""
        with self.celery.connection_for_write() as connection:
            # One try (broker_connection_timeout, 1 s): the next probe retries.
            connection.ensure_connection(max_retries=0)
            answers = self.celery.control.ping(
                timeout=self.timeout, limit=1, connection=connection
            )
        return bool(answers)

    def silence(self, age: float | None) -> str:
        """No worker answered: since when, as far as this process knows."""
        unanswered = f"no worker answered a ping within {self.timeout:g} s"
        if age is None:
            return f"{unanswered}, nor since this process started"
        return f"{unanswered}; the last answer was {age:.0f} s ago"
