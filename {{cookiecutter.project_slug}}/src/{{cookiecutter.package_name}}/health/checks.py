"""Health checks: small functions that raise when a dependency is not usable.

Features register their own readiness checks with `add_check`, so /health/ready
covers every configured backend without this module knowing about them. Checks
run at the same time, each in its own thread with its own app context, and
each must finish within HEALTH_CHECK_TIMEOUT: a probe answers in bounded time
even when a backend accepts connections and never replies.

Readiness fails only on what stops this process from serving: register a
check as critical only if the process can serve nothing without what it
checks (its database). Anything the service can do without for a while
(Redis: the limits and the cache fall back to process memory; the broker: a
sign-up succeeds without its welcome e-mail; the Celery workers) is
registered with critical=False: its failure is reported as "warn" (and in the
health_check_passing metric) and leaves the probe passing. Nor may it slow
the probe down: it gets at most WARN_TIMEOUT, so that a hung broker or Redis
cannot make every probe outlast an orchestrator's timeout (Kubernetes' is 1 s
by default) while the process serves. A backend that
every replica shares would otherwise take them all out of rotation at once,
turning a degradation into an outage. A check may return a line saying what
it saw when it passes.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask, current_app
from pydantic import BaseModel
from sqlalchemy import text

from ..extensions import db
from ..resilience import redis_store

# Returns None, or a line saying what it saw (the report's detail).
Check = Callable[[], str | None]
EXTENSION_KEY = "health_checks"
# Seconds a non-critical check may take (at most HEALTH_CHECK_TIMEOUT).
WARN_TIMEOUT = 0.8
T = TypeVar("T")


class HealthCheckError(Exception):
    """A check failed for a reason that is safe to show to any caller."""


@dataclass(frozen=True)
class RegisteredCheck:
    """A check, whether its failure makes the process unready, and the
    seconds it may take if not the default (see run_checks)."""

    check: Check
    critical: bool = True
    timeout: float | None = None


@dataclass
class CheckRegistry:
    """The checks behind /health/ready and /health/startup, and the results
    last computed from them (see Recent)."""

    ready: dict[str, RegisteredCheck] = field(default_factory=dict)
    startup: dict[str, RegisteredCheck] = field(default_factory=dict)
    results: dict[str, Recent[Any]] = field(default_factory=dict)

    def recent(self, name: str, seconds: float) -> Recent[Any]:
        """The cache of result `name`, made on first use."""
        return self.results.setdefault(name, Recent(seconds))


class Recent(Generic[T]):
    """A result computed at most once per `seconds` in this process.

    A caller that finds it older computes it again, and the callers that come
    meanwhile get the previous one at once (only the callers that come before
    the first result wait for it), so that any number of probes holds at most
    one thread per result on the checks. ``clock`` is time.monotonic; tests set
    one they move by hand.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.clock: Callable[[], float] = time.monotonic
        self.value: T | None = None
        self.computed_at = -math.inf
        self.computing = False
        self._done = threading.Condition()

    def get(self, compute: Callable[[], T]) -> T:
        """The result, computed by `compute` when it is `seconds` old."""
        with self._done:
            while True:
                started = self.clock()
                fresh = started - self.computed_at < self.seconds
                if self.value is not None and (fresh or self.computing):
                    return self.value
                if not self.computing:
                    break
                self._done.wait()
            self.computing = True
        value: T | None = None
        try:
            value = compute()
        finally:
            with self._done:
                self.computing = False
                if value is not None:
                    self.value, self.computed_at = value, started
                self._done.notify_all()
        return value


def registry(app: Flask) -> CheckRegistry:
    """The app's check registry, created on first use."""
    found: CheckRegistry = app.extensions.setdefault(EXTENSION_KEY, CheckRegistry())
    return found


def add_check(  # noqa: PLR0913 - the three options are keywords
    app: Flask,
    name: str,
    check: Check,
    *,
    startup: bool = False,
    critical: bool = True,
    timeout: float | None = None,
) -> None:
    """Register a readiness check (or, with startup=True, a startup check).

    critical=True (the default) only for what the process cannot serve
    without: see the module's docstring. With critical=False, its failure is
    a warning that leaves the probe passing, and the check gets WARN_TIMEOUT
    unless `timeout` says otherwise: only a check that remembers its
    failures, so that it is slow at most once in a while (the workers' pings),
    should ask for more. Every check gets HEALTH_CHECK_TIMEOUT at most.
    """
    found = registry(app)
    checks = found.startup if startup else found.ready
    checks[name] = RegisteredCheck(check, critical, timeout)
    # A new check counts from the next probe on.
    found.results.clear()


def check_database() -> None:
    """The database answers a trivial query."""
    db.session.execute(text("SELECT 1"))


def check_redis() -> None:
    """Redis (REDIS_URL) answers a PING."""
    store = redis_store(current_app)
    if store is not None:
        store.client.ping()


@functools.cache
def migration_heads(directory: str) -> frozenset[str]:
    """The newest revisions in `directory`, read from disk once per process."""
    if not (Path(directory) / "env.py").is_file():
        raise HealthCheckError("no migrations directory found")
    return frozenset(ScriptDirectory(directory).get_heads())


def check_migrations() -> None:
    """The database schema is at the newest migration."""
    heads = migration_heads(str(current_app.extensions["migrate"].directory))
    with db.engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current != heads:
        raise HealthCheckError("the database schema is not at the newest migration")


class CheckReport(BaseModel):
    """The outcome of one check: "warn" is the failure of a non-critical one."""

    status: Literal["pass", "warn", "fail"]
    duration_ms: float
    # Why the check did not pass.
    error: str | None = None
    # What a passing check saw, when it says.
    detail: str | None = None


class CheckRun:
    """One check running in a thread of its own, inside its own app context."""

    def __init__(self, app: Flask, name: str, registered: RegisteredCheck) -> None:
        self.app = app
        self.name = name
        self.check = registered.check
        self.critical = registered.critical
        self.timeout = registered.timeout
        self.report: CheckReport | None = None
        self.started = time.perf_counter()
        # A daemon: a check stuck past its deadline must not keep the process up.
        self.thread = threading.Thread(
            target=self.run, name=f"health-check-{name}", daemon=True
        )
        self.thread.start()

    def run(self) -> None:
        with self.app.app_context():
            try:
                detail = self.check()
            except Exception as error:  # noqa: BLE001 - a check may fail in any way
                self.app.logger.warning("health check %s failed: %r", self.name, error)
                # Only our own messages are shown: a driver's may name hosts or users.
                reason = str(error) if isinstance(error, HealthCheckError) else None
                self.report = self.failed(reason or type(error).__name__)
            else:
                self.report = CheckReport(
                    status="pass", duration_ms=elapsed_ms(self.started), detail=detail
                )

    def failed(self, reason: str) -> CheckReport:
        """A failure: "fail" for a critical check, "warn" for another."""
        return CheckReport(
            status="fail" if self.critical else "warn",
            duration_ms=elapsed_ms(self.started),
            error=reason,
        )

    def allowed(self, timeout: float) -> float:
        """Seconds this check may take, HEALTH_CHECK_TIMEOUT being `timeout`."""
        own = self.timeout
        if own is None:
            own = timeout if self.critical else WARN_TIMEOUT
        return min(own, timeout)

    def outcome(self, timeout: float) -> CheckReport:
        """The check's report, or a failure if it has not finished in time."""
        if self.report is not None:
            return self.report
        self.app.logger.warning(
            "health check %s timed out after %s s", self.name, timeout
        )
        return self.failed(f"timed out after {timeout:g} s")


def run_checks(checks: dict[str, RegisteredCheck]) -> dict[str, CheckReport]:
    """Run every check at once; each gets HEALTH_CHECK_TIMEOUT seconds at most,
    and WARN_TIMEOUT if it is not critical, unless it asked for another."""
    # The app itself, not the context-local proxy: the checks run in other threads.
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]  # noqa: SLF001
    timeout: float = app.config["HEALTH_CHECK_TIMEOUT"]
    # The checks use connections of their own: end this request's transaction
    # (its credentials were looked up), so that it holds no connection while it
    # waits for them; with in-memory SQLite, the one they need.
    db.session.close()
    runs = [CheckRun(app, name, registered) for name, registered in checks.items()]
    started = time.monotonic()
    judged: dict[str, CheckReport] = {}
    # The shorter waits first: each check is judged at its own deadline.
    for run in sorted(runs, key=lambda run: run.allowed(timeout)):
        allowed = run.allowed(timeout)
        run.thread.join(max(0.0, started + allowed - time.monotonic()))
        judged[run.name] = run.outcome(allowed)
    return {run.name: judged[run.name] for run in runs}


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
