"""Probes for orchestrators: live (the process answers), ready, startup."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, current_app
from pydantic import BaseModel
from spectree import Response as Responses

from ..extensions import spec
from ..resilience import breakers_of, exempt
from .checks import Check, CheckReport, registry, run_checks

# Probes are never rate limited or shed: an orchestrator must always get an answer.
health_bp = exempt(Blueprint("health", __name__, url_prefix="/health"))
TAGS = ["health"]


class HealthReport(BaseModel):
    """Overall status, with one entry per check."""

    status: Literal["pass", "fail"]
    checks: dict[str, CheckReport]


def report(checks: dict[str, Check]) -> tuple[HealthReport, int]:
    results = run_checks(checks)
    healthy = all(result.status == "pass" for result in results.values())
    status: Literal["pass", "fail"] = "pass" if healthy else "fail"
    return HealthReport(status=status, checks=results), 200 if healthy else 503


@health_bp.get("/live")
@spec.validate(
    resp=Responses(HTTP_200=HealthReport), tags=TAGS, operation_id="health_live"
)
def live() -> HealthReport:
    """The process is up and serving requests; touches no dependency."""
    return HealthReport(status="pass", checks={})


@health_bp.get("/ready")
@spec.validate(
    resp=Responses(HTTP_200=HealthReport, HTTP_503=HealthReport),
    tags=TAGS,
    operation_id="health_ready",
)
def ready() -> tuple[HealthReport, int]:
    """Every backend the service needs answers (503 naming the ones that do not)."""
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
    resp=Responses(HTTP_200=HealthReport, HTTP_503=HealthReport),
    tags=TAGS,
    operation_id="health_startup",
)
def startup() -> tuple[HealthReport, int]:
    """Start-up work is done: the database is reachable and fully migrated."""
    return report(registry(current_app).startup)
