"""Limits on password sign-ins that guard each account without locking its owner out.

A refusal per account alone lets anyone lock a chosen account: a few wrong
passwords from anywhere, and the owner's right one is refused too. So an
attempt counts against:

- its client address (POLICY_LIMIT_LOGIN, 5 a minute): one address guesses
  slowly, whichever accounts it tries;
- the account it names, from clients the account has never signed in on
  (POLICY_LIMIT_LOGIN_ACCOUNT, 100 an hour): many addresses together guess
  slowly too. This one threshold is shared by strangers, and an attacker may
  use it up;
- or, from a device the account signed in on before, that device
  (POLICY_LIMIT_LOGIN): a successful sign-in leaves a signed cookie naming
  the account (OWASP's "device cookie"), and a client that shows it is
  counted on its own, so whatever strangers do, the owner's browsers and
  cookie-keeping clients still sign in.

The cookie proves nothing by itself: it is no credential, only which count
an attempt goes to, and it still needs the password. It names the account as
it was signed in to (its address and its ``fs_uniquifier``): a password change
(or a deactivation) replaces the uniquifier, so every client that knew the old
password is a stranger again.

Sign-ups count the same way, but no device knows a mailbox that has no
account yet. So an attempt counts against its client address
(POLICY_LIMIT_REGISTER, 5 a minute and 20 an hour), and against the mailbox
it names only with a far higher threshold (POLICY_LIMIT_REGISTER_MAILBOX,
100 an hour) that no one address can reach: a few clients trying someone's
mailbox do not keep its owner from signing up with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from flask import Response, after_this_request, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select

from ..extensions import db
from ..models import User
from ..resilience import client_address, enforce

DEVICE_COOKIE = "known_device"
# A device stays known this long after its last successful sign-in.
DEVICE_LIFETIME = 180 * 24 * 60 * 60
SALT = "known-device"


def serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt=SALT)


def account_tag(email: str, uniquifier: str) -> str:
    """A keyed digest of the account's address and fs_uniquifier: the cookie
    shows neither, and names the account only until its password changes."""
    key = str(current_app.secret_key or "").encode()
    named = f"{email}\0{uniquifier}".encode()
    return hmac.new(key, named, hashlib.sha256).hexdigest()[:32]


def current_uniquifier(email: str) -> str | None:
    """The fs_uniquifier of the account `email` (normalised) now, if any."""
    return db.session.scalar(select(User.fs_uniquifier).where(User.email == email))


def known_device(email: str, uniquifier: str | None = None) -> str | None:
    """The id of the device this request's cookie names, if it names `email`'s
    account as it is now (`uniquifier`, else looked up) and is genuine and
    recent."""
    cookie = request.cookies.get(DEVICE_COOKIE)
    if not cookie or not current_app.secret_key:
        return None
    try:
        claims: Any = serializer().loads(cookie, max_age=DEVICE_LIFETIME)
    except BadSignature:
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("device"), str):
        return None
    uniquifier = uniquifier or current_uniquifier(email)
    if uniquifier is None or claims.get("account") != account_tag(email, uniquifier):
        return None
    device: str = claims["device"]
    return device


def limit_sign_in(email: str) -> None:
    """Count a password sign-in attempt for `email` (normalised); 429 when one
    of its limits is spent."""
    enforce("login", identity=client_address())
    device = known_device(email)
    if device is not None:
        enforce("login", identity=f"device:{device}")
    else:
        enforce("login-account", identity=f"account:{email}")


def limit_sign_up(email: str) -> None:
    """Count a sign-up attempt for the mailbox `email` (valid_email's spelling);
    429 when one of its limits is spent."""
    enforce("register", identity=client_address())
    enforce("register-mailbox", identity=f"mailbox:{email}")


def remember_device(user: User) -> None:
    """After a successful sign-in of `user`: the answer (re)sets the cookie that
    makes this client known to the account, under the fs_uniquifier the
    password was checked against (a sign-in racing a password change gets a
    cookie the change already ended)."""
    if not current_app.secret_key:
        return
    uniquifier = user.fs_uniquifier
    device = known_device(user.email, uniquifier) or secrets.token_urlsafe(16)
    value = serializer().dumps(
        {"device": device, "account": account_tag(user.email, uniquifier)}
    )

    @after_this_request
    def set_cookie(response: Response) -> Response:
        response.set_cookie(
            DEVICE_COOKIE,
            value,
            max_age=DEVICE_LIFETIME,
            secure=current_app.config["SESSION_COOKIE_SECURE"],
            httponly=True,
            samesite="Strict",
        )
        return response
