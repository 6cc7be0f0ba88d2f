"""Accounts and their credentials: users, API keys and refresh-token families."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, UTCDateTime, utcnow

EMAIL_MAX_LENGTH = 254
ROLES = ("admin", "user")
SCOPES = ("read", "write")


def new_uniquifier() -> str:
    return secrets.token_urlsafe(32)


class User(Base):
    """Someone who signs in: with a password, a token or one of their API keys.

    ``fs_uniquifier`` names the user in sessions and tokens instead of the id,
    so replacing it (a password change does) ends every session and token at
    once without touching the id.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Normalised (auth/users.py: normalise_email) before it is stored or looked up.
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    fs_uniquifier: Mapped[str] = mapped_column(
        String(64), unique=True, default=new_uniquifier
    )
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # A subset of ROLES; JSON so that it reads the same on every database.
    roles: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["user"])
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )

    api_keys: Mapped[list[ApiKey]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def __repr__(self) -> str:
        return f"<User {self.id}>"


class ApiKey(Base):
    """A machine client's key: only its public prefix and a hash are kept.

    A key is live until it expires or is revoked (by its owner, an admin, a
    password change or the account's deactivation). It also belongs to the
    account's ``fs_uniquifier`` as it was when its request authenticated: a
    password change, a deactivation or a provider's claim replaces that, so a
    key made by a request that raced one of them never works.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    # The lookup half of the key, shown in lists; the rest is only hashed.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    # A subset of SCOPES.
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # The account's fs_uniquifier when the key was made: it works only while
    # that is still the account's.
    user_uniquifier: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="api_keys")

    def __repr__(self) -> str:
        return f"<ApiKey {self.prefix}>"


class TokenFamily(Base):
    """One sign-in through the token endpoint, and the refresh tokens it begot.

    Only the newest refresh token of a family is valid (``current_jti``). A
    refresh token presented after its successor was issued has been copied:
    the whole family is revoked, which also ends its access tokens. Like an
    API key, a family belongs to the account's ``fs_uniquifier`` as it was
    when the sign-in was checked, and ends when that is replaced.
    """

    __tablename__ = "token_families"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    current_jti: Mapped[str] = mapped_column(String(32))
    # The account's fs_uniquifier when the sign-in was checked.
    user_uniquifier: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<TokenFamily {self.id}>"
