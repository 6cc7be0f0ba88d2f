"""Alembic environment: migrate the Flask app's database with its models' metadata."""

from __future__ import annotations

import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.operations import MigrationScript
from alembic.runtime.migration import MigrationContext
from flask import current_app

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

migrate_ext = current_app.extensions["migrate"]
target_metadata = migrate_ext.db.metadata


def skip_empty_revisions(
    _context: MigrationContext,
    _revision: Any,
    directives: list[MigrationScript],
) -> None:
    """Do not write a revision file when autogenerate finds no change."""
    if getattr(config.cmd_opts, "autogenerate", False):
        script = directives[0]
        if script.upgrade_ops is not None and script.upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")


def run_migrations_offline() -> None:
    """Emit SQL for the configured database without connecting to it."""
    context.configure(
        url=migrate_ext.db.engine.url.render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        **migrate_ext.configure_args,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on a live connection of the app's engine."""
    with migrate_ext.db.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # A migration may rewrite a large table: lift the app's per-statement
            # cap for this session. Commit, so that Alembic starts (and commits)
            # its own transaction rather than joining this one.
            connection.exec_driver_sql("SET statement_timeout = 0")
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            process_revision_directives=skip_empty_revisions,
            # Flask-Migrate's defaults: compare_type=True and render_as_batch=True
            # (batch mode lets SQLite, which cannot ALTER much, rebuild tables).
            **migrate_ext.configure_args,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
