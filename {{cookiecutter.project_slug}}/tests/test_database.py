"""An unavailable database is a 503 with Retry-After, logged once per outage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import event, exc

from {{ cookiecutter.package_name }}.database import is_unavailable
from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE
from {{ cookiecutter.package_name }}.extensions import db

from conftest import AppFactory

ITEMS = "/api/v1/items"


@pytest.fixture
def file_app(make_app: AppFactory, tmp_path: Path) -> Flask:
    """An app whose SQLite file lives in a directory that does not exist yet."""
    return make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/data/app.db")


def tracebacks(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for record in caplog.records if record.exc_info)


def test_requests_get_a_503_while_the_database_is_unavailable(
    file_app: Flask, tmp_path: Path
) -> None:
    client = file_app.test_client()
    for method, path in [("get", ITEMS), ("post", ITEMS), ("get", f"{ITEMS}/1")]:
        response = getattr(client, method)(path, json={"name": "Widget"})
        assert response.status_code == 503, path
        assert response.mimetype == PROBLEM_MEDIA_TYPE
        assert response.headers["Retry-After"] == "5"
        body = response.get_data(as_text=True)
        assert str(tmp_path) not in body
        assert "OperationalError" not in body


def test_an_outage_logs_one_traceback_and_one_line_per_request(
    file_app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = file_app.test_client()
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert client.get(ITEMS).status_code == 503
    assert tracebacks(caplog) == 1
    assert len(caplog.records) == 5
    assert "database unavailable on GET '/api/v1/items'" in caplog.records[-1].message

    # The database comes back: requests succeed and the outage is over.
    (tmp_path / "data").mkdir()
    with file_app.app_context():
        db.create_all()
    assert client.get(ITEMS).status_code == 200

    # It goes away again: a new outage, so one new traceback.
    caplog.clear()
    (tmp_path / "data").rename(tmp_path / "moved")
    with file_app.app_context():
        db.engine.dispose()
    with caplog.at_level(logging.WARNING):
        assert client.get(ITEMS).status_code == 503
        assert client.get(ITEMS).status_code == 503
    assert tracebacks(caplog) == 1


def test_a_read_only_database_is_unavailable_not_broken() -> None:
    # What PostgreSQL raises on a standby, or on a primary being demoted.
    read_only = exc.InternalError(
        "INSERT ...", {}, psycopg.errors.ReadOnlySqlTransaction("read-only")
    )
    assert is_unavailable(read_only)
    unique = exc.IntegrityError("INSERT ...", {}, psycopg.errors.UniqueViolation())
    assert not is_unavailable(unique)
    assert not is_unavailable(exc.InvalidRequestError("a bug"))


def test_other_database_errors_are_500s(app: Flask) -> None:
    @app.get("/bug")
    def bug() -> str:
        raise exc.InvalidRequestError("a bug")

    response = app.test_client().get("/bug")
    assert response.status_code == 500
    assert "Retry-After" not in response.headers


def test_a_connection_that_breaks_after_the_answer_does_not_fail_it(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The request pushes its own app context, so the session is cleaned up at
    # its end, where the rollback of the read fails.
    app = make_app(tables=True)
    with app.app_context():
        engine = db.engine

    def broken(_connection: Any) -> None:
        raise exc.OperationalError("ROLLBACK", {}, Exception("connection lost"))

    client = app.test_client()
    event.listen(engine, "rollback", broken)
    try:
        with caplog.at_level(logging.WARNING):
            response = client.get(ITEMS)
    finally:
        event.remove(engine, "rollback", broken)
    assert response.status_code == 200
    assert "closing the database session failed (OperationalError)" in caplog.text
    assert client.get(ITEMS).status_code == 200


def test_a_hung_database_is_a_503_after_the_connect_timeout(
    make_app: AppFactory, hung_server: int
) -> None:
    app = make_app(
        SQLALCHEMY_DATABASE_URI=(
            f"postgresql+psycopg://app@127.0.0.1:{hung_server}/app?connect_timeout=1"
        )
    )
    response = app.test_client().get(ITEMS)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
