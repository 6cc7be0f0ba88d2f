"""Health checks: small functions that raise when a dependency is not usable.

Features register their own readiness checks with `add_check`, so /health/ready
covers every configured backend without this module knowing about them.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask, current_app
from pydantic import BaseModel
from sqlalchemy import text

from ..extensions import db

Check = Callable[[], None]
EXTENSION_KEY = "health_checks"


class HealthCheckError(Exception):
    """A check failed for a reason that is safe to show to any caller."""


@dataclass
class CheckRegistry:
    """The checks behind /health/ready and /health/startup."""

    ready: dict[str, Check] = field(default_factory=dict)
    startup: dict[str, Check] = field(default_factory=dict)


def registry(app: Flask) -> CheckRegistry:
    """The app's check registry, created on first use."""
    found: CheckRegistry = app.extensions.setdefault(EXTENSION_KEY, CheckRegistry())
    return found


def add_check(app: Flask, name: str, check: Check, *, startup: bool = False) -> None:
    """Register a readiness check (or, with startup=True, a startup check)."""
    checks = registry(app).startup if startup else registry(app).ready
    checks[name] = check


def check_database() -> None:
    """The database answers a trivial query."""
    db.session.execute(text("SELECT 1"))


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
    """The outcome of one check."""

    status: Literal["pass", "fail"]
    duration_ms: float
    error: str | None = None


def run_checks(checks: dict[str, Check]) -> dict[str, CheckReport]:
    """Run every check, timing each; a failure never stops the others."""
    results = {}
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as error:  # noqa: BLE001 - a check may fail in any way
            current_app.logger.warning("health check %s failed: %r", name, error)
            with contextlib.suppress(Exception):
                db.session.rollback()
            # Only our own messages are shown: a driver's may name hosts or users.
            detail = str(error) if isinstance(error, HealthCheckError) else None
            results[name] = CheckReport(
                status="fail",
                duration_ms=elapsed_ms(started),
                error=detail or type(error).__name__,
            )
        else:
            results[name] = CheckReport(status="pass", duration_ms=elapsed_ms(started))
    return results


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
