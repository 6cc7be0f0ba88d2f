"""Liveness, readiness and startup probes."""

from __future__ import annotations

import threading
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }}.health import add_check
from {{ cookiecutter.package_name }}.health.checks import HealthCheckError

from conftest import AppFactory


def test_live_answers_without_touching_dependencies(
    make_app: AppFactory, tmp_path: Path
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
    make_app: AppFactory, tmp_path: Path
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
        "detail": None,
    }


def test_a_non_critical_failure_warns_and_stays_ready(
    app: Flask, client: FlaskClient
) -> None:
    def broken() -> None:
        raise HealthCheckError("no worker answered")

    def observed() -> str:
        return "a worker answered 3 s ago"

    add_check(app, "workers", broken, critical=False)
    add_check(app, "mirror", observed, critical=False)
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["status"] == "pass"
    checks = response.json["checks"]
    assert checks["workers"]["status"] == "warn"
    assert checks["workers"]["error"] == "no worker answered"
    assert checks["mirror"]["status"] == "pass"
    assert checks["mirror"]["detail"] == "a worker answered 3 s ago"
    # A critical failure still fails the probe, warnings or not.
    add_check(app, "queue", broken)
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["status"] == "fail"
    assert response.json["checks"]["workers"]["status"] == "warn"
    assert response.json["checks"]["queue"]["status"] == "fail"


def test_startup_waits_for_migrations(client: FlaskClient) -> None:
    # The fixture made the tables without Alembic, so no revision is recorded.
    response = client.get("/health/startup")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["migrations"]["error"] == (
        "the database schema is not at the newest migration"
    )


def test_startup_passes_once_migrated(migrated_app: Flask) -> None:
    response = migrated_app.test_client().get("/health/startup")
    assert response.status_code == 200
    assert response.json is not None
    assert set(response.json["checks"]) == {"database", "migrations"}


def test_startup_fails_without_a_migrations_directory(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(MIGRATIONS_DIRECTORY=str(tmp_path))
    response = app.test_client().get("/health/startup")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["migrations"]["error"] == (
        "no migrations directory found"
    )


def test_a_check_that_hangs_fails_at_its_deadline(
    make_app: AppFactory,
) -> None:
    app = make_app(HEALTH_CHECK_TIMEOUT=0.2)
    release = threading.Event()

    def stuck() -> None:
        release.wait(10)

    add_check(app, "stuck", stuck)
    add_check(app, "stuck-optional", stuck, critical=False)
    try:
        response = app.test_client().get("/health/ready")
    finally:
        release.set()
    assert response.status_code == 503
    assert response.json is not None
    checks = response.json["checks"]
    assert checks["stuck"]["error"] == "timed out after 0.2 s"
    assert checks["stuck"]["status"] == "fail"
    assert checks["stuck-optional"]["error"] == "timed out after 0.2 s"
    assert checks["stuck-optional"]["status"] == "warn"
    assert checks["database"]["status"] == "pass"


def test_checks_run_at_the_same_time(make_app: AppFactory) -> None:
    # Each check waits for the other: run one after the other, both would fail.
    app = make_app(HEALTH_CHECK_TIMEOUT=5)
    both = threading.Barrier(2, timeout=4)

    def meet() -> None:
        both.wait()

    add_check(app, "first", meet)
    add_check(app, "second", meet)
    response = app.test_client().get("/health/ready")
    assert response.status_code == 200, response.json


def test_probes_answer_while_the_database_hangs(
    make_app: AppFactory, hung_server: int
) -> None:
    # The server accepts connections and never replies; the connect timeout
    # (5 s) is longer than a check may take.
    app = make_app(
        SQLALCHEMY_DATABASE_URI=(
            f"postgresql+psycopg://app@127.0.0.1:{hung_server}/app?connect_timeout=5"
        ),
        HEALTH_CHECK_TIMEOUT=0.5,
    )
    client = app.test_client()
    assert client.get("/health/live").status_code == 200
    for probe, names in [
        ("/health/ready", {"database"}),
        ("/health/startup", {"database", "migrations"}),
    ]:
        response = client.get(probe)
        assert response.status_code == 503
        assert response.json is not None
        assert names <= set(response.json["checks"])
        for name in names:
            assert response.json["checks"][name]["error"] == "timed out after 0.5 s"
            # Reported at the deadline, not after the connect timeout.
            assert response.json["checks"][name]["duration_ms"] < 5000


def unreachable_sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/missing-directory/app.db"
