"""Fixtures shared by the test suite: app, client, runner and the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import text

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.extensions import db

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Build apps like create_app(); their connections are closed afterwards.

    Testing apps use in-memory SQLite, or $TEST_DATABASE_URL when it is set.
    """
    apps: list[Flask] = []

    def factory(config_name: str | None = "testing", **overrides: Any) -> Flask:
        overrides.setdefault("MIGRATIONS_DIRECTORY", str(MIGRATIONS))
        app = create_app(config_name, **overrides)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()


def drop_everything() -> None:
    db.session.remove()
    db.drop_all()
    with db.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture
def app(make_app: AppFactory) -> Iterator[Flask]:
    """A testing app whose tables exist and are empty."""
    app = make_app()
    with app.app_context():
        drop_everything()
        db.create_all()
        yield app
        drop_everything()


@pytest.fixture
def empty_app(make_app: AppFactory) -> Iterator[Flask]:
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
