"""Request and response models of the auth API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from ..config import MAX_API_KEY_DAYS
from ..models.user import EMAIL_MAX_LENGTH
from ..text import NOT_PLAIN, plain
from .passwords import MAX_LENGTH
from .users import EMAIL_PATTERN, AccountError, normalise_email, valid_email


def mailbox(email: str) -> str:
    """valid_email for pydantic: a ValueError names the field."""
    try:
        return valid_email(email)
    except AccountError as refused:
        raise ValueError(str(refused)) from None


# Looked up in its normalised form (users.normalise_email), so that one
# address has one account whatever its case or Unicode spelling.
Email = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX_LENGTH, pattern=EMAIL_PATTERN),
    AfterValidator(normalise_email),
]
# A new account's address: exactly one mailbox, in its one spelling.
NewEmail = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX_LENGTH, pattern=EMAIL_PATTERN),
    AfterValidator(mailbox),
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LENGTH)]
Scope = Literal["read", "write"]
Role = Literal["admin", "user"]


def json_number(value: object) -> object:
    """A JSON number only: "30" and true are refused; 30.0 is what JSON Schema
    calls an integer, which the int type then takes (30.5 it refuses)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


Days = Annotated[int, Field(ge=1, le=MAX_API_KEY_DAYS), BeforeValidator(json_number)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(Strict):
    """An e-mail address and its password."""

    email: Email
    password: Password


class Registration(Strict):
    """The e-mail address and the password of a new account."""

    email: NewEmail
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


class UserUpdate(Strict):
    """What an admin may change of an account: whether it is enabled.

    Disabling it ends every sign-in and revokes every API key of the account.
    """

    active: bool


class ApiKeyCreate(Strict):
    """A name to recognise the key by, and what it may do."""

    # Shown back in lists and pages: nothing that hides, reorders or breaks it.
    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=100, pattern=rf"^[^{NOT_PLAIN}]+$"),
        AfterValidator(plain),
    ]
    scopes: list[Scope] = Field(min_length=1, max_length=2)
    expires_in_days: Days | None = Field(
        default=None,
        description=(
            "Days until the key expires: API_KEY_TTL_DAYS when absent, at most "
            "API_KEY_MAX_TTL_DAYS."
        ),
    )
    password: Password | None = Field(
        default=None,
        description=(
            "The account's password: needed unless the token's sign-in is at "
            "most API_KEY_SIGN_IN_MAX_AGE seconds old."
        ),
    )


class ApiKeyOut(BaseModel):
    """A key, without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    """A new key, with its secret: shown this once, stored only as a hash."""

    key: str


class ApiKeyList(BaseModel):
    """The caller's keys, newest first."""

    api_keys: list[ApiKeyOut]
