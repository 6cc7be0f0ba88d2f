"""The migrations build exactly the schema the models describe."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from flask_migrate import downgrade, upgrade
from sqlalchemy import JSON, Boolean, column, insert, inspect, table

from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import ApiKey, Item, TokenFamily
from {{ cookiecutter.package_name }}.models.base import UTCDateTime, utcnow


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


# The tables as revision 0002 made them, for writing rows the way a project
# that has not upgraded yet holds them.
USERS = table(
    "users",
    column("id"),
    column("email"),
    column("password_hash"),
    column("fs_uniquifier"),
    column("active", Boolean),
    column("roles", JSON),
    column("created_at", UTCDateTime),
    column("updated_at", UTCDateTime),
)
API_KEYS = table(
    "api_keys",
    column("id"),
    column("user_id"),
    column("name"),
    column("prefix"),
    column("secret_hash"),
    column("scopes", JSON),
    column("created_at", UTCDateTime),
)
TOKEN_FAMILIES = table(
    "token_families",
    column("id"),
    column("user_id"),
    column("current_jti"),
    column("created_at", UTCDateTime),
    column("expires_at", UTCDateTime),
)
ITEMS = table(
    "items",
    column("id"),
    column("name"),
    column("quantity"),
    column("created_at", UTCDateTime),
    column("updated_at", UTCDateTime),
)


@pytest.mark.usefixtures("empty_app")
def test_owners_and_expiry_come_to_existing_rows() -> None:
    upgrade(revision="0002")
    now = utcnow()
    with db.engine.begin() as connection:
        connection.execute(
            insert(USERS).values(
                id=1,
                email="old@example.com",
                password_hash="-",
                fs_uniquifier="u1",
                active=True,
                roles=["user"],
                created_at=now,
                updated_at=now,
            )
        )
        connection.execute(
            insert(API_KEYS).values(
                id=1,
                user_id=1,
                name="old",
                prefix="0123456789ab",
                secret_hash="-",
                scopes=["read"],
                created_at=now,
            )
        )
        connection.execute(
            insert(TOKEN_FAMILIES).values(
                id="f1",
                user_id=1,
                current_jti="j",
                created_at=now,
                expires_at=now + timedelta(days=1),
            )
        )
        connection.execute(
            insert(ITEMS).values(
                id=1, name="old", quantity=0, created_at=now, updated_at=now
            )
        )
    upgrade()
    key = db.session.get_one(ApiKey, 1)
    # Keys made before expiry existed live 90 days from the upgrade.
    assert abs(key.expires_at - utcnow() - timedelta(days=90)) < timedelta(minutes=5)
    # Keys and sign-ins made before belong to the account's current
    # fs_uniquifier: they work until it changes.
    assert key.user_uniquifier == "u1"
    assert db.session.get_one(TokenFamily, "f1").user_uniquifier == "u1"
    # Items made before owners existed are left to admins.
    assert db.session.get_one(Item, 1).owner_id is None
    db.session.remove()
    downgrade(revision="0002")
    assert not {"expires_at", "user_uniquifier"} & {
        found["name"] for found in inspect(db.engine).get_columns("api_keys")
    }
    assert "user_uniquifier" not in {
        found["name"] for found in inspect(db.engine).get_columns("token_families")
    }
    downgrade(revision="base")
