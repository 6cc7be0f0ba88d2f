"""The migrations build exactly the schema the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from flask_migrate import downgrade
from sqlalchemy import inspect

from {{ cookiecutter.package_name }}.extensions import db


@pytest.mark.usefixtures("empty_app")
def test_there_is_a_single_head() -> None:
    script = ScriptDirectory(current_app.extensions["migrate"].directory)
    assert len(script.get_heads()) == 1


@pytest.mark.usefixtures("migrated_app")
def test_upgrade_matches_the_models() -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


@pytest.mark.usefixtures("migrated_app")
def test_downgrade_removes_every_table() -> None:
    assert "items" in inspect(db.engine).get_table_names()
    downgrade(revision="base")
    tables = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
