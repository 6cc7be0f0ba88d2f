"""Fixtures shared by the test suite: app, client, runner and the database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import text

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.extensions import db

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def make_app() -> Flask:
    """A testing app: in-memory SQLite, or $TEST_DATABASE_URL when set."""
    return create_app("testing", MIGRATIONS_DIRECTORY=str(MIGRATIONS))


def drop_everything() -> None:
    db.session.remove()
    db.drop_all()
    with db.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture
def app() -> Iterator[Flask]:
    """A testing app whose tables exist and are empty."""
    app = make_app()
    with app.app_context():
        drop_everything()
        db.create_all()
        yield app
        drop_everything()


@pytest.fixture
def empty_app() -> Iterator[Flask]:
    """A testing app whose database has no tables at all (for migrations)."""
    app = make_app()
    with app.app_context():
        drop_everything()
        yield app
        drop_everything()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()
