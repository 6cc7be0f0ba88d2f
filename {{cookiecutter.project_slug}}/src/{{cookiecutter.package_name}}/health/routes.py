"""Probes for orchestrators: live (the process answers), ready, startup.

Probes are never rate limited. Liveness touches nothing and is never shed, so
it answers even while every other thread waits on a stuck backend. Readiness
and startup run checks that may wait up to HEALTH_CHECK_TIMEOUT, so they take
an in-flight slot like any request: at the bound they answer at once that the
worker is at capacity (a 503 health report), and a flood of probes cannot hold
every thread.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, current_app
from pydantic import BaseModel

from ..extensions import spec
from ..openapi import RETRY_AFTER, Responses
from ..resilience import LoadShed, breakers_of, exempt, never_shed
from .checks import CheckReport, RegisteredCheck, registry, run_checks

health_bp = exempt(Blueprint("health", __name__, url_prefix="/health"))
TAGS = ["health"]


class HealthReport(BaseModel):
    """Overall status, with one entry per check: "pass" unless a critical check
    failed (a non-critical one that failed says "warn")."""

    status: Literal["pass", "fail"]
    checks: dict[str, CheckReport]


def checked_responses() -> Responses:
    """Readiness and startup: a report either way, Retry-After when at capacity."""
    return Responses(
        HTTP_200=HealthReport,
        HTTP_503=HealthReport,
        headers={503: {"Retry-After": RETRY_AFTER}},
    )


@health_bp.errorhandler(LoadShed)
def at_capacity(error: LoadShed) -> Response:
    """A shed probe: a failed health report naming the reason, not a problem."""
    shed = HealthReport(
        status="fail",
        checks={
            "capacity": CheckReport(
                status="fail",
                duration_ms=0.0,
                error="the worker is at its in-flight bound (MAX_IN_FLIGHT)",
            )
        },
    )
    return current_app.response_class(
        shed.model_dump_json(),
        status=503,
        mimetype="application/json",
        headers=dict(error.get_headers()) | {"Content-Type": "application/json"},
    )


def report(checks: dict[str, RegisteredCheck]) -> tuple[HealthReport, int]:
    results = run_checks(checks)
    healthy = all(result.status != "fail" for result in results.values())
    status: Literal["pass", "fail"] = "pass" if healthy else "fail"
    return HealthReport(status=status, checks=results), 200 if healthy else 503


@health_bp.get("/live")
@never_shed
@spec.validate(
    resp=Responses(HTTP_200=HealthReport), tags=TAGS, operation_id="health_live"
)
def live() -> HealthReport:
    """The process is up and serving requests; touches no dependency."""
    return HealthReport(status="pass", checks={})


@health_bp.get("/ready")
@spec.validate(
    resp=checked_responses(),
    tags=TAGS,
    operation_id="health_ready",
)
def ready() -> tuple[HealthReport, int]:
    """Every backend the service needs answers (503 naming the ones that do not).

    A non-critical check that fails says "warn" and leaves the answer 200: what
    it guards, the service can do without for a while.
    """
    return report(registry(current_app).ready)


class DependencyReport(BaseModel):
    """One upstream's circuit breaker."""

    state: Literal["closed", "open", "half-open"]
    failures: int
    retry_after: int | None


class DependenciesReport(BaseModel):
    """The state of the breaker in front of each upstream service."""

    dependencies: dict[str, DependencyReport]


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
    return DependenciesReport(
        dependencies={
            name: DependencyReport.model_validate(report, from_attributes=True)
            for name, report in breakers_of().report().items()
        }
    )


@health_bp.get("/startup")
@spec.validate(
    resp=checked_responses(),
    tags=TAGS,
    operation_id="health_startup",
)
def startup() -> tuple[HealthReport, int]:
    """Start-up work is done: the database is reachable and fully migrated."""
    return report(registry(current_app).startup)
