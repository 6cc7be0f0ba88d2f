"""Liveness, readiness and startup probes."""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from {{ cookiecutter.package_name }}.health import add_check
from {{ cookiecutter.package_name }}.health.checks import (
    WARN_TIMEOUT,
    HealthCheckError,
    Recent,
    registry,
)

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
    # When to ask again: the probes' result is reused for HEALTH_RESULT_SECONDS.
    assert response.headers["Retry-After"] == "5"
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
    assert response.headers["Retry-After"] == "5"
    assert response.json is not None
    assert response.json["checks"]["migrations"]["error"] == (
        "the database schema is not at the newest migration"
    )


def test_startup_passes_once_migrated(migrated_app: Flask) -> None:
    response = migrated_app.test_client().get("/health/startup")
    assert response.status_code == 200
    assert "Retry-After" not in response.headers
    assert response.json is not None
    assert set(response.json["checks"]) == {"database", "migrations"}


def test_a_failing_probe_asks_for_no_retry_before_its_result_can_change(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(
        SQLALCHEMY_DATABASE_URI=unreachable_sqlite(tmp_path), HEALTH_RESULT_SECONDS=7.5
    )
    client = app.test_client()
    for probe in ("/health/ready", "/health/startup"):
        response = client.get(probe)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "8"


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


def ready_with_hung_checks(app: Flask, **checks: dict[str, Any]) -> TestResponse:
    """/health/ready with a check that never ends for each name in `checks`
    (the keywords add_check takes with it); the checks end afterwards."""
    release = threading.Event()

    def stuck() -> None:
        release.wait(60)

    for name, options in checks.items():
        add_check(app, name.replace("_", "-"), stuck, **options)
    try:
        return app.test_client().get("/health/ready")
    finally:
        release.set()


def test_a_check_that_hangs_fails_at_its_deadline(
    make_app: AppFactory,
) -> None:
    app = make_app(HEALTH_CHECK_TIMEOUT=0.2)
    response = ready_with_hung_checks(app, stuck={}, stuck_optional={"critical": False})
    assert response.status_code == 503
    assert response.json is not None
    checks = response.json["checks"]
    assert checks["stuck"]["error"] == "timed out after 0.2 s"
    assert checks["stuck"]["status"] == "fail"
    assert checks["stuck-optional"]["error"] == "timed out after 0.2 s"
    assert checks["stuck-optional"]["status"] == "warn"
    assert checks["database"]["status"] == "pass"


def test_a_check_that_is_not_critical_cannot_slow_the_probe(
    make_app: AppFactory,
) -> None:
    # A hung broker or Redis: the probe must not wait HEALTH_CHECK_TIMEOUT on
    # what cannot fail it (an orchestrator's probe gives up after 1 s).
    app = make_app(HEALTH_CHECK_TIMEOUT=30)
    response = ready_with_hung_checks(app, broker={"critical": False})
    assert response.status_code == 200
    assert response.json is not None
    broker = response.json["checks"]["broker"]
    assert (broker["status"], broker["error"]) == (
        "warn",
        f"timed out after {WARN_TIMEOUT:g} s",
    )
    assert response.json["checks"]["database"]["status"] == "pass"


def test_a_check_may_have_a_deadline_of_its_own(make_app: AppFactory) -> None:
    app = make_app(HEALTH_CHECK_TIMEOUT=30)
    response = ready_with_hung_checks(app, queue={"timeout": 0.3})
    assert response.status_code == 503
    assert response.json is not None
    queue = response.json["checks"]["queue"]
    assert (queue["status"], queue["error"]) == ("fail", "timed out after 0.3 s")


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


# --- One result a second, details to whom may read /metrics ----------------------


@dataclass
class Counted:
    """A check that counts its runs, and waits for `release` while `slow`."""

    runs: int = 0
    slow: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> None:
        self.runs += 1
        if self.slow:
            self.entered.set()
            self.release.wait(10)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def cached_app(make_app: AppFactory, check: Counted) -> tuple[Flask, Clock]:
    """An app whose readiness result lives a second, on a clock moved by hand."""
    app = make_app(HEALTH_RESULT_SECONDS=1.0)
    add_check(app, "counted", check)
    clock = Clock()
    registry(app).recent("ready", 1.0).clock = clock
    return app, clock


def test_probes_run_the_checks_at_most_once_a_second(make_app: AppFactory) -> None:
    check = Counted()
    app, clock = cached_app(make_app, check)
    client = app.test_client()
    for _ in range(20):
        assert client.get("/health/ready").status_code == 200
    assert check.runs == 1
    clock.now += 0.9
    client.get("/health/ready")
    assert check.runs == 1
    clock.now += 0.1
    client.get("/health/ready")
    assert check.runs == 2


def test_probes_get_the_last_result_while_one_runs_the_checks(
    make_app: AppFactory,
) -> None:
    check = Counted()
    app, clock = cached_app(make_app, check)
    client = app.test_client()
    assert client.get("/health/ready").status_code == 200
    check.slow = True
    clock.now += 1.0
    refreshing = threading.Thread(target=lambda: app.test_client().get("/health/ready"))
    refreshing.start()
    try:
        assert check.entered.wait(10)
        # One probe runs the checks; the others answer from the last result at
        # once instead of holding a thread each on the checks too.
        for _ in range(5):
            assert client.get("/health/ready").status_code == 200
        assert check.runs == 2
    finally:
        check.release.set()
        refreshing.join(10)


def test_the_first_result_is_waited_for() -> None:
    recent: Recent[str] = Recent(1.0)
    started = threading.Event()
    release = threading.Event()
    results: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        return "first"

    runner = threading.Thread(target=lambda: results.append(recent.get(slow)))
    runner.start()
    assert started.wait(10)
    waiter = threading.Thread(target=lambda: results.append(recent.get(lambda: "x")))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "it has no result to fall back on: it waits"
    release.set()
    runner.join(10)
    waiter.join(10)
    # The second caller had no result to fall back on: it waited for the first.
    assert results == ["first", "first"]


def test_a_failed_computation_is_not_kept() -> None:
    recent: Recent[str] = Recent(1.0)

    def broken() -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        recent.get(broken)
    assert recent.get(lambda: "second") == "second"


def test_details_only_where_metrics_may_be_read(
    make_app: AppFactory, tmp_path: Path
) -> None:
    token = "t" * 40
    app = make_app(METRICS_ALLOWED_NETWORKS=(), METRICS_TOKEN=token)
    client = app.test_client()
    # The status code and the overall result are public; the checks are not.
    assert client.get("/health/ready").json == {"status": "pass", "checks": None}
    assert client.get("/health/dependencies").json == {
        "status": "pass",
        "dependencies": None,
    }
    startup = client.get("/health/startup")
    assert (startup.status_code, startup.json) == (
        503,
        {"status": "fail", "checks": None},
    )
    bearer = {"Authorization": f"Bearer {token}"}
    shown = client.get("/health/ready", headers=bearer).json
    assert shown is not None
    assert shown["checks"]["database"]["status"] == "pass"
    dependencies = client.get("/health/dependencies", headers=bearer).json
    assert dependencies is not None
    assert dependencies["dependencies"]["pricing"]["state"] == "closed"
    assert client.get("/health/ready", headers={"Authorization": "Bearer x"}).json == {
        "status": "pass",
        "checks": None,
    }
    # From an allowed network, without the token.
    trusted = make_app(METRICS_ALLOWED_NETWORKS=(ipaddress.ip_network("10.0.0.0/8"),))
    answer = trusted.test_client().get(
        "/health/ready", environ_base={"REMOTE_ADDR": "10.1.2.3"}
    )
    assert answer.json is not None
    # (The same checks as the token holder saw: the database, and Redis when
    # the suite runs with TEST_REDIS_URL.)
    assert set(answer.json["checks"]) == set(shown["checks"]) >= {"database"}
    down = make_app(
        SQLALCHEMY_DATABASE_URI=unreachable_sqlite(tmp_path),
        METRICS_ALLOWED_NETWORKS=(),
    )
    refused = down.test_client().get("/health/ready")
    assert refused.status_code == 503
    assert refused.json == {"status": "fail", "checks": None}


def test_redis_failing_warns_and_leaves_the_process_ready(
    make_app: AppFactory,
) -> None:
    # Nothing listens on port 9: Redis is down. The limits and the cache fall
    # back to process memory and the service serves, so it stays in rotation.
    app = make_app(REDIS_URL="redis://127.0.0.1:9/0", REDIS_TIMEOUT=0.2)
    response = app.test_client().get("/health/ready")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["status"] == "pass"
    assert response.json["checks"]["redis"]["status"] == "warn"
    # And a metric says which check did not pass.
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'health_check_passing{check="redis"} 0.0' in metrics
    assert 'health_check_passing{check="database"} 1.0' in metrics


def unreachable_sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/missing-directory/app.db"
