"""Probes for orchestrators: live (the process answers), ready, startup, and
the breakers' report (dependencies).

Probes are never rate limited, take no in-flight slot and are never shed: an
orchestrator probes every pod from one node address, so neither a per-client
limit nor backpressure may refuse it. What keeps a flood of probes cheap is
that ready, startup and dependencies serve a result computed at most once per
HEALTH_RESULT_SECONDS (1 s) in each process (checks.Recent); liveness touches
nothing at all. Readiness also fails while this worker is overloaded, as
backpressure measures it (live, not cached).

The status code and the overall status are public. What each check saw (the
backends' names, timings and errors) is shown only where /metrics may be
read: to METRICS_ALLOWED_NETWORKS and to holders of METRICS_TOKEN.
"""

from __future__ import annotations

import math
from typing import Literal

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel

from ..extensions import spec
from ..observability import counting, may_read_metrics
from ..openapi import RETRY_AFTER, Responses
from ..resilience import breakers_of, exempt, never_shed, overloaded
from .checks import CheckReport, RegisteredCheck, registry, run_checks

health_bp = exempt(Blueprint("health", __name__, url_prefix="/health"))
TAGS = ["health"]
# Seconds a client of a failing readiness or startup probe is told to wait
# (Retry-After), at least: a sooner retry gets the same cached result.
RETRY_AFTER_FAILED = 5
OVERLOADED = CheckReport(
    status="fail",
    duration_ms=0.0,
    error="the worker is overloaded: it sheds the requests that wait too long",
)


class HealthReport(BaseModel):
    """Overall status, with one entry per check: "pass" unless a critical check
    failed (a non-critical one that failed says "warn"). `checks` is null
    for callers that may not read /metrics."""

    status: Literal["pass", "fail"]
    checks: dict[str, CheckReport] | None


def checked_responses() -> Responses:
    """Readiness and startup: a report either way, Retry-After with a 503."""
    return Responses(
        HTTP_200=HealthReport,
        HTTP_503=HealthReport,
        headers={503: {"Retry-After": RETRY_AFTER}},
    )


def report(checks: dict[str, RegisteredCheck]) -> HealthReport:
    results = run_checks(checks)
    healthy = all(result.status != "fail" for result in results.values())
    return HealthReport(status="pass" if healthy else "fail", checks=results)


def recent_report(app: Flask, kind: Literal["ready", "startup"]) -> HealthReport:
    """The report of the `kind` checks, at most HEALTH_RESULT_SECONDS old."""
    found = registry(app)
    recent = found.recent(kind, app.config["HEALTH_RESULT_SECONDS"])

    def compute() -> HealthReport:
        computed = report(found.ready if kind == "ready" else found.startup)
        if kind == "ready":
            count_checks(app, computed)
        return computed

    result: HealthReport = recent.get(compute)
    return result


def count_checks(app: Flask, computed: HealthReport) -> None:
    """health_check_passing: 1 for each readiness check that passed, else 0."""
    if (metrics := counting(app)) and computed.checks is not None:
        for name, result in computed.checks.items():
            metrics.health_checks.labels(name).set(result.status == "pass")


Answer = tuple[HealthReport, int, dict[str, str]]


def answer(found: HealthReport, headers: dict[str, str] | None = None) -> Answer:
    """`found` (without its checks for a caller that may not read them), 200
    if it passed, else 503 with Retry-After (`headers`', else
    RETRY_AFTER_FAILED seconds, or HEALTH_RESULT_SECONDS if longer)."""
    if not may_read_metrics():
        found = HealthReport(status=found.status, checks=None)
    headers = dict(headers or {})
    if found.status == "pass":
        return found, 200, headers
    cached = math.ceil(current_app.config["HEALTH_RESULT_SECONDS"])
    headers.setdefault("Retry-After", str(max(RETRY_AFTER_FAILED, cached)))
    return found, 503, headers


@health_bp.get("/live")
@never_shed
@spec.validate(
    resp=Responses(HTTP_200=HealthReport), tags=TAGS, operation_id="health_live"
)
def live() -> HealthReport:
    """The process is up and serving requests; touches no dependency."""
    return HealthReport(status="pass", checks={})


@health_bp.get("/ready")
@never_shed
@spec.validate(
    resp=checked_responses(),
    tags=TAGS,
    operation_id="health_ready",
)
def ready() -> Answer:
    """This process can serve: its database answers, and it is not overloaded
    (503 naming what failed, to those who may read /metrics).

    Other backends (Redis, the broker) say "warn" when they fail, and leave
    the answer 200: the service does without them for a while.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]  # noqa: SLF001
    found = recent_report(app, "ready")
    if overloaded(app):
        checks = (found.checks or {}) | {"capacity": OVERLOADED}
        return answer(HealthReport(status="fail", checks=checks), {"Retry-After": "1"})
    return answer(found)


@health_bp.get("/startup")
@never_shed
@spec.validate(
    resp=checked_responses(),
    tags=TAGS,
    operation_id="health_startup",
)
def startup() -> Answer:
    """Start-up work is done: the database is reachable and fully migrated."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]  # noqa: SLF001
    return answer(recent_report(app, "startup"))


class DependencyReport(BaseModel):
    """One upstream's circuit breaker."""

    state: Literal["closed", "open", "half-open"]
    failures: int
    retry_after: int | None


class DependenciesReport(BaseModel):
    """The breaker in front of each upstream service: "warn" when one is not
    closed. `dependencies` is null for callers that may not read /metrics."""

    status: Literal["pass", "warn"]
    dependencies: dict[str, DependencyReport] | None


def breakers_report() -> DependenciesReport:
    found = {
        name: DependencyReport.model_validate(report, from_attributes=True)
        for name, report in breakers_of().report().items()
    }
    closed = all(breaker.state == "closed" for breaker in found.values())
    return DependenciesReport(status="pass" if closed else "warn", dependencies=found)


@health_bp.get("/dependencies")
@never_shed
@spec.validate(
    resp=Responses(HTTP_200=DependenciesReport),
    tags=TAGS,
    operation_id="health_dependencies",
)
def dependencies() -> DependenciesReport:
    """Each upstream's breaker: state, consecutive failures, seconds until a retry.

    Informational, always 200: an upstream that is down degrades some answers,
    so it must not take this service out of rotation (that is /health/ready).
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]  # noqa: SLF001
    recent = registry(app).recent("dependencies", app.config["HEALTH_RESULT_SECONDS"])
    found: DependenciesReport = recent.get(breakers_report)
    if may_read_metrics():
        return found
    return DependenciesReport(status=found.status, dependencies=None)
