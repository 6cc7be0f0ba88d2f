"""Give items an owner, API keys an expiry, and credentials their uniquifier.

Existing items get no owner (only admins may change them); existing API keys
expire 90 days after this migration runs. API keys and token families record
the account's fs_uniquifier they were made under (models/user.py); existing
ones get the account's current one, so they keep working until it changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables whose rows belong to the account's fs_uniquifier.
CREDENTIALS = ("api_keys", "token_families")
# What keys made before expiry existed are given (API_KEY_TTL_DAYS' default).
EXISTING_KEYS_LIFETIME = timedelta(days=90)


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch.create_index(batch.f("ix_items_owner_id"), ["owner_id"], unique=False)
        batch.create_foreign_key(
            batch.f("fk_items_owner_id_users"),
            "users",
            ["owner_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.add_column(
        "api_keys",
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    keys = sa.table("api_keys", sa.column("expires_at", sa.DateTime(timezone=True)))
    op.execute(
        keys.update().values(expires_at=datetime.now(UTC) + EXISTING_KEYS_LIFETIME)
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column(
            "expires_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
    users = sa.table("users", sa.column("id"), sa.column("fs_uniquifier"))
    for name in CREDENTIALS:
        op.add_column(
            name, sa.Column("user_uniquifier", sa.String(length=64), nullable=True)
        )
        rows = sa.table(name, sa.column("user_id"), sa.column("user_uniquifier"))
        op.execute(
            rows.update().values(
                user_uniquifier=sa.select(users.c.fs_uniquifier)
                .where(users.c.id == rows.c.user_id)
                .scalar_subquery()
            )
        )
        with op.batch_alter_table(name) as batch:
            batch.alter_column(
                "user_uniquifier", existing_type=sa.String(length=64), nullable=False
            )


def downgrade() -> None:
    for name in reversed(CREDENTIALS):
        with op.batch_alter_table(name) as batch:
            batch.drop_column("user_uniquifier")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("items") as batch:
        batch.drop_constraint(batch.f("fk_items_owner_id_users"), type_="foreignkey")
        batch.drop_index(batch.f("ix_items_owner_id"))
        batch.drop_column("owner_id")
