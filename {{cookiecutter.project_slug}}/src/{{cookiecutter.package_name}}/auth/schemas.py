"""Request and response models of the auth API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ..models.user import EMAIL_MAX_LENGTH
from .passwords import MAX_LENGTH
from .users import EMAIL_PATTERN, normalise_email

# Compared in its normalised form (users.normalise_email), so that one address
# has one account whatever its case or Unicode spelling.
Email = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX_LENGTH, pattern=EMAIL_PATTERN),
    AfterValidator(normalise_email),
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LENGTH)]
Scope = Literal["read", "write"]
Role = Literal["admin", "user"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(Strict):
    """An e-mail address and its password."""

    email: Email
    password: Password


class RefreshRequest(Strict):
    """A refresh token, traded for a new pair or revoked."""

    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class TokenResponse(BaseModel):
    """A token pair (RFC 6749 section 5.1 names)."""

    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name
    expires_in: int = Field(description="Seconds the access token is valid.")


class PasswordChange(Strict):
    """The current password, and the one to replace it."""

    current_password: Password
    new_password: Password


class UserOut(BaseModel):
    """An account as its owner (or an admin) sees it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    roles: list[Role]
    active: bool
    created_at: datetime


class UserList(BaseModel):
    """Every account."""

    users: list[UserOut]


class ApiKeyCreate(Strict):
    """A name to recognise the key by, and what it may do."""

    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"),
    ]
    scopes: list[Scope] = Field(min_length=1, max_length=2)


class ApiKeyOut(BaseModel):
    """A key, without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    """A new key, with its secret: shown this once, stored only as a hash."""

    key: str


class ApiKeyList(BaseModel):
    """The caller's keys, newest first."""

    api_keys: list[ApiKeyOut]
