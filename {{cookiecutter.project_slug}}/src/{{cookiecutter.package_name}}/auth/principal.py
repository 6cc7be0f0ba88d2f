"""Who is calling, and the one decorator that says who may.

A request presents at most one credential: ``Authorization: Bearer <access
token>`` or ``X-API-Key: <key>`` (or, on the web UI's pages only, a session:
see ``accept_sessions``). It is verified once, when first asked for
(by ``require``, or by the rate limiter, which counts a verified caller by
its identity instead of its address), and kept for the rest of the request.

    @items_bp.post("")
    @protected("write")
    @require(scope="write")
    @spec.validate(..., security=AUTHENTICATED)
    def create_item(...): ...

401 (no or bad credentials, with ``WWW-Authenticate``) and 403 (a missing
scope or role) are problem documents like every other error. Credentials that
fail verification on a public view are ignored, as if none were sent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec

from flask import Flask, current_app, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import Forbidden, Unauthorized

from ..models import ApiKey, User
from ..models.user import SCOPES
from ..resilience.protect import add_precondition
from . import tokens, users

API_KEY_HEADER = "X-API-Key"
# Kept in the WSGI environ: per request, unlike ``g``, which a request shares
# with an app context that was pushed before it (as the test suite does).
PRINCIPAL_KEY = "auth.principal"
FAILURE_KEY = "auth.failure"
# The function that names a request's session user (the web UI registers it).
SESSIONS_KEY = "auth_sessions"
REALM = "api"
P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]


@dataclass(frozen=True)
class Principal:
    """A verified caller: the user, how they proved it, and what they may do;
    for an access token, when its sign-in happened (if the token says).

    `uniquifier` is the account's fs_uniquifier the credential was verified
    against: what the caller makes (an API key) belongs to it, so that a
    password change or a deactivation racing the request ends that too.
    """

    user: User
    scopes: frozenset[str]
    uniquifier: str
    api_key: ApiKey | None = None
    signed_in_at: datetime | None = None

    @property
    def owner(self) -> str:
        """Whose rate limits and idempotency keys the call counts against: the
        user's, whichever of their credentials it carries (more keys bring no
        more quota, and a retry with another one finds its first request)."""
        return f"user:{self.user.id}"


class Unauthenticated(Unauthorized):
    """401 with the RFC 6750 challenge; `error` is set when a token was refused.

    `max_age` asks for a sign-in at most that many seconds old (RFC 9470's
    step-up challenge, with error="insufficient_user_authentication").
    """

    def __init__(
        self, description: str, *, error: str | None = None, max_age: int | None = None
    ) -> None:
        super().__init__(description)
        bearer = f'Bearer realm="{REALM}"'
        if error:
            bearer += f', error="{error}"'
        if max_age is not None:
            bearer += f", max_age={max_age}"
        self.challenge = f'{bearer}, ApiKey realm="{REALM}"'

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [
            *super().get_headers(*args, **kwargs),
            ("WWW-Authenticate", self.challenge),
        ]


def current_principal() -> Principal | None:
    """The verified caller of this request, or None (anonymous or refused)."""
    environ = request.environ
    if PRINCIPAL_KEY not in environ:
        environ[PRINCIPAL_KEY] = authenticate()
    found: Principal | None = environ[PRINCIPAL_KEY]
    return found


def known_principal() -> Principal | None:
    """The caller this request has verified so far, if any; verifies nothing."""
    found: Principal | None = request.environ.get(PRINCIPAL_KEY)
    return found


def authenticate() -> Principal | None:
    """Verify the request's credential; a failure is remembered for require()."""
    environ = request.environ
    sessions = sessions_of(current_app)
    if sessions is not None and sessions.here():
        return from_session(sessions)
    bearer = "HTTP_AUTHORIZATION" in environ
    api_key = "HTTP_X_API_KEY" in environ
    if not bearer and not api_key:
        return None
    try:
        if bearer and api_key:
            raise Refused("Send one credential: a bearer token or an API key.")
        if api_key:
            return from_api_key(request.headers[API_KEY_HEADER])
        return from_bearer(request.headers["Authorization"])
    except Refused as refused:
        environ[FAILURE_KEY] = str(refused)
        return None


class Refused(Exception):  # noqa: N818 - what happened to the credential
    """A credential that does not verify; the message tells the client why."""


@dataclass(frozen=True)
class Sessions:
    """How a front end with sessions (the web UI) plugs into authentication.

    ``here`` says whether a request is for its pages, where only a session
    counts (an API key or token sent there is ignored: keys may not manage
    accounts, and pages check CSRF tokens, not headers); ``user`` names the
    session's user, asked only there (never on the JSON API, whose routes
    take no CSRF token);
    ``start`` signs a user in and answers the browser (a sign-in through an
    identity provider ends there).
    """

    here: Callable[[], bool]
    user: Callable[[], User | None]
    start: Callable[[User], ResponseReturnValue]


def accept_sessions(app: Flask, sessions: Sessions) -> None:
    app.extensions[SESSIONS_KEY] = sessions


def sessions_of(app: Flask) -> Sessions | None:
    found: Sessions | None = app.extensions.get(SESSIONS_KEY)
    return found


def from_session(sessions: Sessions) -> Principal | None:
    user = sessions.user()
    if user is None:
        return None
    return Principal(user=user, scopes=frozenset(SCOPES), uniquifier=user.fs_uniquifier)


def from_api_key(plain: str) -> Principal:
    key = users.check_api_key(plain)
    if key is None:
        raise Refused("The API key is not valid.")
    return Principal(
        user=key.user,
        scopes=frozenset(key.scopes),
        uniquifier=key.user_uniquifier,
        api_key=key,
    )


def from_bearer(header: str) -> Principal:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused("Use the Bearer scheme: Authorization: Bearer <token>.")
    try:
        claims = tokens.verify(token.strip(), "access")
    except tokens.InvalidToken as invalid:
        raise Refused(str(invalid)) from None
    found = users.user_of_access_token(claims)
    if found is None:
        raise Refused("The token is revoked or its account disabled.")
    user, uniquifier = found
    return Principal(
        user=user,
        scopes=frozenset(SCOPES),
        uniquifier=uniquifier,
        signed_in_at=tokens.signed_in_at(claims),
    )


def client_owner() -> str | None:
    """Whose quota the rate limiter counts the caller against, or None.

    None (the client's address) while the database cannot say: the view's own
    lookup then answers 503, and the limiter never takes a database error for
    a storage failure of its own.
    """
    try:
        principal = current_principal()
    except SQLAlchemyError:
        return None
    return None if principal is None else principal.owner


def authenticated() -> Principal:
    """The caller, or 401 saying what was wrong with the credential."""
    principal = current_principal()
    if principal is None:
        failure: str | None = request.environ.get(FAILURE_KEY)
        if failure is None:
            raise Unauthenticated(
                "Authentication is required: send a bearer token or an API key."
            )
        raise Unauthenticated(failure, error="invalid_token")
    return principal


def require(
    *, scope: str | None = None, role: str | None = None
) -> Callable[[View[P]], View[P]]:
    """Only verified callers, with `scope` (read, write) and `role` when given."""
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def check() -> None:
        principal = authenticated()
        if scope is not None and scope not in principal.scopes:
            raise Forbidden(f"This needs the {scope} scope.")
        if role is not None and not principal.user.has_role(role):
            raise Forbidden(f"This needs the {role} role.")

    def decorate(view: View[P]) -> View[P]:
        @functools.wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            check()
            return view(*args, **kwargs)

        # protected() runs it too, before replaying an idempotent answer.
        add_precondition(guarded, check)
        return guarded

    return decorate
