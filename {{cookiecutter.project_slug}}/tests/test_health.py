"""Liveness, readiness and startup probes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import downgrade, upgrade

from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.health import add_check
from {{ cookiecutter.package_name }}.health.checks import HealthCheckError


def test_live_answers_without_touching_dependencies(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    # A database that cannot even be opened does not make the process "dead".
    app = make_app(SQLALCHEMY_DATABASE_URI=unreachable_sqlite(tmp_path))
    response = app.test_client().get("/health/live")
    assert response.status_code == 200
    assert response.json == {"status": "pass", "checks": {}}


def test_ready_when_the_database_answers(client: FlaskClient) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["status"] == "pass"
    database = response.json["checks"]["database"]
    assert database["status"] == "pass"
    assert database["duration_ms"] >= 0
    assert database["error"] is None


def test_not_ready_when_the_database_is_unreachable(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=unreachable_sqlite(tmp_path))
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["status"] == "fail"
    database = response.json["checks"]["database"]
    assert database["status"] == "fail"
    # The class of the error, never its message (which may name hosts or users).
    assert database["error"] == "OperationalError"
    assert str(tmp_path) not in response.get_data(as_text=True)


def test_a_failing_check_does_not_hide_the_others(
    app: Flask, client: FlaskClient
) -> None:
    def broken() -> None:
        raise HealthCheckError("queue is full")

    add_check(app, "queue", broken)
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json is not None
    checks = response.json["checks"]
    assert checks["database"]["status"] == "pass"
    assert checks["queue"] == {
        "status": "fail",
        "duration_ms": checks["queue"]["duration_ms"],
        "error": "queue is full",
    }


def test_startup_waits_for_migrations(client: FlaskClient) -> None:
    # The fixture made the tables without Alembic, so no revision is recorded.
    response = client.get("/health/startup")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["migrations"]["error"] == (
        "the database schema is not at the newest migration"
    )


def test_startup_passes_once_migrated(empty_app: Flask) -> None:
    upgrade()
    try:
        response = empty_app.test_client().get("/health/startup")
        assert response.status_code == 200
        assert response.json is not None
        assert set(response.json["checks"]) == {"database", "migrations"}
    finally:
        db.session.remove()
        downgrade(revision="base")


def test_startup_fails_without_a_migrations_directory(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(MIGRATIONS_DIRECTORY=str(tmp_path))
    response = app.test_client().get("/health/startup")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["migrations"]["error"] == (
        "no migrations directory found"
    )


def unreachable_sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/missing-directory/app.db"
