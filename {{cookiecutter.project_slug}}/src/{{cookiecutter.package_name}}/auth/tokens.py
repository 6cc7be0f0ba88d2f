"""Access and refresh tokens: RS256 JWTs, verified with every claim pinned.

An access token lives JWT_ACCESS_TTL seconds and is sent as
``Authorization: Bearer``; a refresh token lives JWT_REFRESH_TTL seconds and
is only accepted by the refresh and logout endpoints. Both name their family
(``fid``: one sign-in, models/user.py: TokenFamily); a family revoked by a
logout, a password change or a reused refresh token ends all of its tokens,
in every worker, across restarts (it is a database row). An access token also
says when its sign-in happened (``auth_time``, as in OpenID Connect), which
is how a view asks for a recent sign-in (auth/api.py: creating an API key).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
from flask import current_app

from .keys import SigningKeys

ALGORITHM = "RS256"
TokenType = Literal["access", "refresh"]
LIFETIME_SETTING = {"access": "JWT_ACCESS_TTL", "refresh": "JWT_REFRESH_TTL"}
WRONG_TYPE = {
    "access": "This is not an access token.",
    "refresh": "This is not a refresh token.",
}
# Later than any auth_time a token can carry (the year 2514).
MAX_TIMESTAMP = 2**34
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "type", "fid"]


class InvalidToken(Exception):  # noqa: N818 - reads as what the token is
    """A token that must not be accepted; the message says why, to the client."""


def keys() -> SigningKeys:
    found: SigningKeys = current_app.extensions["auth_keys"]
    return found


def new_jti() -> str:
    return secrets.token_hex(16)


def issue(
    token_type: TokenType,
    *,
    subject: str,
    family: str,
    jti: str | None = None,
    auth_time: datetime | None = None,
) -> tuple[str, int]:
    """A signed token of `token_type` for `subject`, and its lifetime in seconds;
    `auth_time`, when given, is when the user signed in."""
    config = current_app.config
    lifetime: int = config[LIFETIME_SETTING[token_type]]
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "iss": config["JWT_ISSUER"],
        "aud": config["JWT_AUDIENCE"],
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=lifetime),
        "jti": jti or new_jti(),
        "type": token_type,
        "fid": family,
    }
    if auth_time is not None:
        claims["auth_time"] = int(auth_time.timestamp())
    signing = keys()
    token = jwt.encode(
        claims, signing.private, algorithm=ALGORITHM, headers={"kid": signing.kid}
    )
    return token, lifetime


def verify(token: str, token_type: TokenType) -> dict[str, Any]:
    """The claims of `token`, or InvalidToken.

    The algorithm is pinned (``alg: none`` and HS256 signed with the public
    key are refused), and exp, nbf, iat, iss, aud and the token type checked.
    """
    config = current_app.config
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            keys().public,
            algorithms=[ALGORITHM],
            audience=config["JWT_AUDIENCE"],
            issuer=config["JWT_ISSUER"],
            leeway=config["JWT_LEEWAY"],
            options={"require": REQUIRED_CLAIMS, "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("The token has expired.") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("The token is meant for another audience.") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("The token was issued by someone else.") from None
    except jwt.InvalidTokenError:
        raise InvalidToken(
            "The token is malformed or its signature is invalid."
        ) from None
    if claims["type"] != token_type:
        raise InvalidToken(WRONG_TYPE[token_type])
    if not all(isinstance(claims[name], str) for name in ("sub", "jti", "fid")):
        raise InvalidToken("The token is malformed or its signature is invalid.")
    # Optional (tokens issued before it existed have none), but a timestamp.
    auth_time = claims.get("auth_time", 0)
    if type(auth_time) is not int or not 0 <= auth_time < MAX_TIMESTAMP:
        raise InvalidToken("The token is malformed or its signature is invalid.")
    return claims


def signed_in_at(claims: dict[str, Any]) -> datetime | None:
    """When the sign-in of verified access-token `claims` happened, if it says."""
    auth_time = claims.get("auth_time")
    return None if auth_time is None else datetime.fromtimestamp(auth_time, UTC)
