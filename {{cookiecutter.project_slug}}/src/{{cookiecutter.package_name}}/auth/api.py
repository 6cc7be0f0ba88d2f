"""The auth API under /api/v1/auth: tokens, the caller's account, API keys, users."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app
from sqlalchemy import select
from werkzeug.exceptions import Conflict, Forbidden, NotFound

from ..errors import FieldError, Problem, RequestValidationError
from ..extensions import db, spec
from ..models import ApiKey, User
from ..models.base import utcnow
from ..openapi import AUTHENTICATED, LOCATION, Responses
from ..resilience import protected
from . import attempts, passwords, tokens, users
from .principal import Principal, Unauthenticated, authenticated, require
from .schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    Credentials,
    PasswordChange,
    RefreshRequest,
    Registration,
    TokenResponse,
    UserList,
    UserOut,
    UserUpdate,
)
from .tokens import InvalidToken

auth_api_bp = Blueprint("auth", __name__, url_prefix="/v1/auth")
TAGS = ["auth"]
# Every operation here is rate limited (429) and needs the database (503); one
# with a body may be refused for it (400, 413, 415); one that needs a signed-in
# caller answers 401 and 403.
ALWAYS: dict[str, Any] = {"HTTP_429": Problem, "HTTP_503": Problem}
WITH_BODY: dict[str, Any] = {
    **ALWAYS,
    "HTTP_400": Problem,
    "HTTP_413": Problem,
    "HTTP_415": Problem,
}
SIGNED_IN: dict[str, Any] = {"HTTP_401": Problem, "HTTP_403": Problem}
BAD_CREDENTIALS = "The e-mail address or the password is not correct."


def token_response(pair: users.TokenPair) -> tuple[TokenResponse, int, dict[str, str]]:
    # RFC 6749 5.1: token answers must not be stored by any cache.
    return (
        TokenResponse(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
        ),
        200,
        {"Cache-Control": "no-store"},
    )


def invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [FieldError(field=field, message=message, code="policy")]
    )


def signed_in_user() -> Principal:
    """The caller, who must have signed in (a token): API keys manage no accounts."""
    principal = authenticated()
    if principal.api_key is not None:
        raise Forbidden(
            "An API key cannot do this: use a token from /api/v1/auth/token."
        )
    return principal


@auth_api_bp.post("/register")
@protected("auth")
@spec.validate(
    resp=Responses(
        HTTP_201=UserOut,
        HTTP_409=Problem,
        headers={201: {"Location": LOCATION}},
        **WITH_BODY,
    ),
    tags=TAGS,
    operation_id="register",
)
def register(json: Registration) -> tuple[UserOut, int, dict[str, str]]:
    """Open an account with an e-mail address and a password.

    The address must be one mailbox. Limited per client address
    (POLICY_LIMIT_REGISTER) and, far higher, per mailbox
    (POLICY_LIMIT_REGISTER_MAILBOX), so that others cannot use up the owner's
    sign-ups. A request refused for its password (422) says nothing of the
    address; only a valid one learns that it is taken (409).
    """
    attempts.limit_sign_up(json.email)
    try:
        user = users.create_user(json.email, json.password)
    except users.EmailTaken as taken:
        raise Conflict(str(taken)) from None
    except users.AccountError as refused:
        raise invalid(refused.field, str(refused)) from None
    return UserOut.model_validate(user), 201, {"Location": "/api/v1/auth/me"}


@auth_api_bp.post("/token")
@protected("auth")
@spec.validate(
    resp=Responses(HTTP_200=TokenResponse, HTTP_401=Problem, **WITH_BODY),
    tags=TAGS,
    operation_id="create_token",
)
def create_token(json: Credentials) -> tuple[TokenResponse, int, dict[str, str]]:
    """Sign in: an e-mail address and password give an access and a refresh token.

    Limited per client address (POLICY_LIMIT_LOGIN) and per account from
    unknown clients (POLICY_LIMIT_LOGIN_ACCOUNT); a client the account signed
    in on before (the known_device cookie this answer sets) counts on its own.
    """
    # By address, whatever credential the request carries: a caller can make
    # many API keys, and each would otherwise bring a quota of its own.
    attempts.limit_sign_in(json.email)
    user = users.check_password(json.email, json.password)
    if user is None:
        raise Unauthenticated(BAD_CREDENTIALS)
    attempts.remember_device(user)
    return token_response(users.sign_in(user))


@auth_api_bp.post("/refresh")
@protected("auth")
@spec.validate(
    resp=Responses(HTTP_200=TokenResponse, HTTP_401=Problem, **WITH_BODY),
    tags=TAGS,
    operation_id="refresh_token",
)
def refresh_token(json: RefreshRequest) -> tuple[TokenResponse, int, dict[str, str]]:
    """Trade a refresh token for a new pair; each refresh token works once.

    Presenting one a second time revokes every token of that sign-in.
    """
    try:
        pair = users.refresh(json.refresh_token)
    except InvalidToken as refused:
        raise Unauthenticated(str(refused), error="invalid_token") from None
    return token_response(pair)


@auth_api_bp.post("/logout")
@protected("auth")
@spec.validate(
    resp=Responses(HTTP_204=None, HTTP_401=Problem, **WITH_BODY),
    tags=TAGS,
    operation_id="logout",
)
def logout(json: RefreshRequest) -> tuple[Response, int]:
    """Sign out: the refresh token's sign-in ends, its access tokens with it."""
    try:
        claims = tokens.verify(json.refresh_token, "refresh")
    except InvalidToken as refused:
        raise Unauthenticated(str(refused), error="invalid_token") from None
    users.revoke_family(claims["fid"])
    return Response(status=204), 204


@auth_api_bp.get("/me")
@protected("auth")
@require()
@spec.validate(
    resp=Responses(HTTP_200=UserOut, HTTP_401=Problem, **ALWAYS),
    tags=TAGS,
    operation_id="get_me",
    security=AUTHENTICATED,
)
def get_me() -> UserOut:
    """The caller's account."""
    return UserOut.model_validate(authenticated().user)


@auth_api_bp.post("/password")
@protected("login")
@spec.validate(
    resp=Responses(HTTP_204=None, **WITH_BODY, **SIGNED_IN),
    tags=TAGS,
    operation_id="change_password",
    security=AUTHENTICATED,
)
def change_password(json: PasswordChange) -> tuple[Response, int]:
    """Change the caller's password; every token and session of theirs ends."""
    user = signed_in_user().user
    try:
        users.change_password(user, json.current_password, json.new_password)
    except users.AccountError as refused:
        raise invalid(refused.field, str(refused)) from None
    return Response(status=204), 204


@auth_api_bp.get("/api-keys")
@protected("auth")
@spec.validate(
    resp=Responses(HTTP_200=ApiKeyList, **ALWAYS, **SIGNED_IN),
    tags=TAGS,
    operation_id="list_api_keys",
    security=AUTHENTICATED,
)
def list_api_keys() -> ApiKeyList:
    """The caller's API keys (never their secrets), newest first."""
    user = signed_in_user().user
    keys = db.session.scalars(
        select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.id.desc())
    )
    return ApiKeyList(api_keys=[ApiKeyOut.model_validate(key) for key in keys])


@auth_api_bp.post("/api-keys")
@protected("auth")
@spec.validate(
    resp=Responses(HTTP_201=ApiKeyCreated, HTTP_409=Problem, **WITH_BODY, **SIGNED_IN),
    tags=TAGS,
    operation_id="create_api_key",
    security=AUTHENTICATED,
)
def create_api_key(json: ApiKeyCreate) -> tuple[ApiKeyCreated, int, dict[str, str]]:
    """A new API key for the caller; its secret is in this answer only.

    It needs a recent sign-in: a token whose sign-in is at most
    API_KEY_SIGN_IN_MAX_AGE seconds old (else 401 with
    error="insufficient_user_authentication" and max_age, RFC 9470), or the
    account's password in the request. A key expires after expires_in_days
    (API_KEY_TTL_DAYS by default, at most API_KEY_MAX_TTL_DAYS); a user has at
    most API_KEYS_PER_USER live keys (409 beyond).
    """
    principal = signed_in_user()
    config = current_app.config
    days = json.expires_in_days or config["API_KEY_TTL_DAYS"]
    if days > config["API_KEY_MAX_TTL_DAYS"]:
        raise invalid(
            "expires_in_days",
            f"A key may live at most {config['API_KEY_MAX_TTL_DAYS']} days.",
        )
    confirm_sign_in(principal, json.password)
    try:
        key, plain = users.create_api_key(
            principal.user,
            json.name,
            list(json.scopes),
            timedelta(days=days),
            uniquifier=principal.uniquifier,
        )
    except users.TooManyKeys as refused:
        raise Conflict(str(refused)) from None
    except users.StaleSignIn as stale:
        raise Unauthenticated(str(stale), error="invalid_token") from None
    created = ApiKeyCreated.model_validate(
        {**ApiKeyOut.model_validate(key).model_dump(), "key": plain}
    )
    return created, 201, {"Cache-Control": "no-store"}


def confirm_sign_in(principal: Principal, password: str | None) -> None:
    """The caller signed in recently, or gave the account's password.

    A stolen access token (it lives JWT_ACCESS_TTL) or a refreshed one is
    not enough to mint a key that would outlive it. A password given here is
    a guess like any other: it counts with the sign-ins, against the same
    limits (per address, and per account or known device), never a quota of
    its own.
    """
    if password is not None:
        attempts.limit_sign_in(principal.user.email)
        if not passwords.verify_password(principal.user.password_hash, password):
            raise invalid("password", "The password is not correct.")
        return
    max_age: int = current_app.config["API_KEY_SIGN_IN_MAX_AGE"]
    signed_in = principal.signed_in_at
    if signed_in is None or utcnow() - signed_in > timedelta(seconds=max_age):
        raise Unauthenticated(
            f"Creating an API key needs a sign-in at most {max_age} seconds old: "
            "sign in again, or send the account's password as password.",
            error="insufficient_user_authentication",
            max_age=max_age,
        )


@auth_api_bp.delete("/api-keys/<int:key_id>")
@protected("auth")
@spec.validate(
    resp=Responses(HTTP_204=None, HTTP_404=Problem, **ALWAYS, **SIGNED_IN),
    tags=TAGS,
    operation_id="revoke_api_key",
    security=AUTHENTICATED,
)
def revoke_api_key(key_id: int) -> tuple[Response, int]:
    """Revoke an API key: the caller's own, or any key for an admin."""
    principal = signed_in_user()
    key = db.session.get(ApiKey, key_id) if key_id < 2**31 else None
    if key is None or (
        key.user_id != principal.user.id and not principal.user.has_role("admin")
    ):
        raise NotFound(f"API key {key_id} does not exist.")
    users.revoke_api_key(key)
    return Response(status=204), 204


@auth_api_bp.get("/users")
@protected("auth")
@require(role="admin")
@spec.validate(
    resp=Responses(HTTP_200=UserList, **ALWAYS, **SIGNED_IN),
    tags=TAGS,
    operation_id="list_users",
    security=AUTHENTICATED,
)
def list_users() -> UserList:
    """Every account, oldest first (admins only)."""
    rows = db.session.scalars(select(User).order_by(User.id))
    return UserList(users=[UserOut.model_validate(user) for user in rows])


@auth_api_bp.patch("/users/<int:user_id>")
@protected("auth")
@require(scope="write", role="admin")
@spec.validate(
    resp=Responses(HTTP_200=UserOut, HTTP_404=Problem, **WITH_BODY, **SIGNED_IN),
    tags=TAGS,
    operation_id="update_user",
    security=AUTHENTICATED,
)
def update_user(user_id: int, json: UserUpdate) -> UserOut:
    """Enable or disable an account (admins only).

    Disabling it ends every session, token and API key of the account; enabling
    it again brings none of them back. A signed-in admin's token only: an API
    key manages no accounts, and an admin cannot disable their own.
    """
    principal = signed_in_user()
    user = db.session.get(User, user_id) if user_id < 2**31 else None
    if user is None:
        raise NotFound(f"User {user_id} does not exist.")
    if user.id == principal.user.id and not json.active:
        raise Forbidden(
            "You cannot disable your own account: another admin can, or the CLI."
        )
    users.set_active(user, active=json.active)
    return UserOut.model_validate(user)
