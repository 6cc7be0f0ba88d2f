"""What can happen to an account: sign-up, sign-in, tokens, API keys, passwords.

Views and commands call these; each commits its own change.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from blinker import Namespace
from email_validator import EmailNotValidError, validate_email
from flask import current_app
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import contains_eager

from ..extensions import db
from ..models import ApiKey, TokenFamily, User
from ..models.base import utcnow
from ..models.user import EMAIL_MAX_LENGTH, new_uniquifier
from . import passwords, tokens
from .tokens import InvalidToken

# API keys read "ak_<prefix>_<secret>": the prefix finds the row, the secret
# (256 random bits) is only ever stored as its SHA-256. A salted slow hash is
# for guessable secrets; nobody guesses 256 random bits.
API_KEY_TAG = "ak"
PREFIX_BYTES = 6
# last_used_at is written at most once a minute per key, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


# Sent with the new User after its account is committed, however it was made
# (the API, the web UI, a provider's sign-in, the CLI); tasks/ sends the
# welcome e-mail on it.
signals = Namespace()
user_registered = signals.signal("user-registered")

# A first filter, spelt out for JavaScript clients: one @, a dot in the domain,
# and none of the characters that make a header hold another address or line
# (space, controls, Unicode line separators, and any of "(),:;<>[\]). Sign-up then
# parses the address as exactly one mailbox (valid_email).
EMAIL_CHARACTER = r'[^@\x00-\x20\x7f-\x9f\u2028\u2029"(),:;<>\[\\\]]'
LOCAL_PART = EMAIL_CHARACTER + "{1,64}"
EMAIL_PATTERN = rf"^{LOCAL_PART}@{EMAIL_CHARACTER}+\.{EMAIL_CHARACTER}+$"


class AccountError(Exception):
    """A request about an account that cannot be granted; the message says why,
    `field` which input it is about."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class EmailTaken(AccountError):  # noqa: N818 - what the address is
    """An account has this address already (said only of a request that is
    valid in every other way)."""

    def __init__(self) -> None:
        super().__init__("An account with this e-mail address exists already.", "email")


class TooManyKeys(Exception):  # noqa: N818 - what the user has
    """The user has as many live API keys as API_KEYS_PER_USER allows."""


class StaleSignIn(Exception):  # noqa: N818 - what the caller's sign-in is
    """The account's password changed, or it was disabled, after the request
    authenticated: what it would make would never work."""


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def valid_email(email: str) -> str:
    """The one mailbox `email` names, in its one spelling, or AccountError.

    NFKC and lowercase first (a fullwidth @ becomes a second @, and so no
    address), then email-validator: exactly one addr-spec, no quoted local
    part, no address literal, no control character or line separator, a
    domain that could exist (IDNA, shown in Unicode). A recipient list
    ("a@x,root"), a display name ("a<b@x>") or a group ("g:b@x;") is no
    address, so one mailbox is one account and one sign-up quota.
    """
    folded = unicodedata.normalize("NFKC", email).lower()
    try:
        found = validate_email(folded, check_deliverability=False, strict=True)
    except EmailNotValidError as error:
        message = f"The e-mail address is not valid: {error}"
        raise AccountError(message, "email") from None
    mailbox = found.normalized
    if "=?" in mailbox:
        # An RFC 2047 encoded word: mail headers decode it into any text,
        # other recipients included, so it is never part of an address here.
        raise AccountError("The e-mail address is not valid.", "email")
    if len(mailbox) > EMAIL_MAX_LENGTH:
        raise AccountError("The e-mail address is too long.", "email")
    return mailbox


def normalise_email(email: str) -> str:
    """The spelling an account is stored and looked up under.

    A valid address gets valid_email's; anything else (a sign-in with a
    typo, or an account made before addresses were parsed) is folded the
    same way and trimmed, and can only match such an old account.
    """
    try:
        return valid_email(email)
    except AccountError:
        return unicodedata.normalize("NFKC", email).strip().lower()


def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == normalise_email(email)))


def create_user(email: str, password: str, roles: list[str] | None = None) -> User:
    """A new active account; AccountError for an invalid request, EmailTaken
    when the address has an account.

    The whole request is judged before the address is looked up, so that a
    refusal of a bad request says nothing about whether the address is taken.
    """
    email = valid_email(email)
    if problem := passwords.weakness(password, email=email):
        raise AccountError(f"The password {problem}.", "password")
    if find_user(email) is not None:
        raise EmailTaken
    user = User(
        email=email,
        password_hash=passwords.hash_password(password),
        roles=sorted(set(roles or ["user"])),
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        # Another request took the address between the lookup and the insert.
        db.session.rollback()
        raise EmailTaken from None
    user_registered.send(user)
    return user


def create_user_without_password(email: str) -> User:
    """A new account that only an identity provider signs in (auth/oidc.py)."""
    user = User(email=valid_email(email), password_hash=passwords.unusable_hash())
    db.session.add(user)
    db.session.commit()
    user_registered.send(user)
    return user


def claim_for_provider(user: User) -> None:
    """Before an identity provider signs `user` in by a proven address: drop a
    password nobody proved the right to, and end the sign-ins and API keys that
    came with it (auth/oidc.py)."""
    if user.password_hash.startswith(passwords.UNUSABLE):
        return
    user.password_hash = passwords.unusable_hash()
    user.fs_uniquifier = new_uniquifier()
    revoke_families(user)
    revoke_api_keys(user)
    db.session.commit()


def check_password(email: str, password: str) -> User | None:
    """The active account `email` with `password`, else None, in the same time.

    The user's ``fs_uniquifier`` is the one the password was checked against
    (the session does not expire objects on commit): a sign-in that raced a
    password change gets tokens of the old one, which never work.

    A hash made with older parameters is replaced by one with the current ones,
    unless the password changed meanwhile (the old one must not come back).
    """
    user = find_user(email)
    stored = user.password_hash if user is not None and user.active else None
    if not passwords.verify_password(stored, password) or user is None:
        return None
    if passwords.needs_rehash(user.password_hash):
        db.session.execute(
            update(User)
            .where(
                User.id == user.id,
                User.password_hash == user.password_hash,
                User.fs_uniquifier == user.fs_uniquifier,
            )
            .values(password_hash=passwords.hash_password(password))
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return user


def change_password(user: User, current: str, new: str) -> None:
    """Replace the password; every session, token and API key of the user ends.

    Whoever knew the old password (or held a token) may have made keys with
    it: a password change is how an owner takes the account back.
    """
    if not passwords.verify_password(user.password_hash, current):
        raise AccountError("The current password is not correct.", "current_password")
    if problem := passwords.weakness(new, email=user.email):
        raise AccountError(f"The new password {problem}.", "new_password")
    user.password_hash = passwords.hash_password(new)
    user.fs_uniquifier = new_uniquifier()
    revoke_families(user)
    revoke_api_keys(user)
    db.session.commit()


def set_active(user: User, *, active: bool) -> None:
    """Enable or disable an account (an admin's decision).

    Disabling ends every session, token and API key of the account for good:
    enabling it again brings none of them back.
    """
    user.active = active
    if not active:
        user.fs_uniquifier = new_uniquifier()
        revoke_families(user)
        revoke_api_keys(user)
    db.session.commit()


def revoke_api_keys(user: User) -> None:
    """Revoke every live API key of `user` (the caller commits)."""
    db.session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def start_family(user: User) -> TokenFamily:
    """A new sign-in of `user`: what its tokens, or its session, belong to.

    It lasts JWT_REFRESH_TTL seconds (refreshing a token extends it) and ends
    with a logout, a password change, or a reused refresh token. It belongs to
    ``user.fs_uniquifier`` as this request loaded it, when the password was
    checked: if a password change or a deactivation has replaced it since,
    the family is dead from the start, whenever its row is written.
    """
    family = TokenFamily(
        id=secrets.token_hex(16),
        user_id=user.id,
        user_uniquifier=user.fs_uniquifier,
        current_jti=tokens.new_jti(),
        expires_at=utcnow() + timedelta(seconds=current_app.config["JWT_REFRESH_TTL"]),
    )
    db.session.add(family)
    db.session.commit()
    return family


def sign_in(user: User) -> TokenPair:
    """A new sign-in for `user`: an access token and a refresh token."""
    return pair_for(user, start_family(user))


def pair_for(user: User, family: TokenFamily) -> TokenPair:
    # The family began with the sign-in: its time is the access token's
    # auth_time, however many refreshes later the token is issued.
    access, lifetime = tokens.issue(
        "access",
        subject=str(user.id),
        family=family.id,
        auth_time=family.created_at,
    )
    refresh, _ = tokens.issue(
        "refresh", subject=str(user.id), family=family.id, jti=family.current_jti
    )
    return TokenPair(access, refresh, lifetime)


def refresh(token: str) -> TokenPair:
    """Trade a refresh token for a new pair; a reused one revokes its family.

    The swap is one conditional UPDATE, so of two requests presenting the same
    refresh token at once, exactly one wins and the other revokes the family.
    """
    claims = tokens.verify(token, "refresh")
    now = utcnow()
    new_jti = tokens.new_jti()
    swapped = db.session.execute(
        update(TokenFamily)
        .where(
            TokenFamily.id == claims["fid"],
            TokenFamily.current_jti == claims["jti"],
            TokenFamily.revoked_at.is_(None),
            TokenFamily.expires_at > now,
        )
        .values(
            current_jti=new_jti,
            expires_at=now + timedelta(seconds=current_app.config["JWT_REFRESH_TTL"]),
        )
        .returning(TokenFamily.id)
    ).scalar_one_or_none()
    family = db.session.get(TokenFamily, claims["fid"])
    if swapped is not None and family is not None and not current(family):
        # A sign-in that raced a password change or a deactivation.
        db.session.rollback()
        raise InvalidToken("The refresh token is revoked or expired.")
    if swapped is None or family is None:
        if family is not None and family.revoked_at is None:
            family.revoked_at = now
            db.session.commit()
            raise InvalidToken(
                "The refresh token was used before: every token of this sign-in "
                "is revoked."
            )
        db.session.rollback()
        raise InvalidToken("The refresh token is revoked or expired.")
    user = db.session.get(User, family.user_id)
    if user is None or not user.active or str(user.id) != claims["sub"]:
        db.session.rollback()
        raise InvalidToken("The account of this token is disabled.")
    db.session.commit()
    return pair_for(user, family)


def current(family: TokenFamily) -> bool:
    """Whether `family` belongs to its account's fs_uniquifier as it is now."""
    now = db.session.scalar(select(User.fs_uniquifier).where(User.id == family.user_id))
    return now is not None and now == family.user_uniquifier


def revoke_family(family_id: str) -> None:
    db.session.execute(
        update(TokenFamily)
        .where(TokenFamily.id == family_id, TokenFamily.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    db.session.commit()


def revoke_families(user: User) -> None:
    """Revoke every token family of `user` (the caller commits)."""
    db.session.execute(
        update(TokenFamily)
        .where(TokenFamily.user_id == user.id, TokenFamily.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def user_of_session(uniquifier: str, family_id: object) -> User | None:
    """The active user a web session names, if its sign-in still stands."""
    if not isinstance(family_id, str):
        return None
    return db.session.execute(
        select(User)
        .join(TokenFamily, TokenFamily.user_id == User.id)
        .where(
            User.fs_uniquifier == uniquifier,
            User.active.is_(True),
            TokenFamily.id == family_id,
            TokenFamily.user_uniquifier == User.fs_uniquifier,
            TokenFamily.revoked_at.is_(None),
            TokenFamily.expires_at > utcnow(),
        )
    ).scalar_one_or_none()


def user_of_access_token(claims: dict[str, object]) -> tuple[User, str] | None:
    """The active user of verified access-token `claims`, if its family stands,
    and the fs_uniquifier the family belongs to (the account's current one)."""
    subject = str(claims["sub"])
    if not subject.isdecimal() or len(subject) > 18:
        return None
    found = db.session.execute(
        select(User, TokenFamily.user_uniquifier)
        .join(TokenFamily, TokenFamily.user_id == User.id)
        .where(
            User.id == int(subject),
            User.active.is_(True),
            TokenFamily.id == claims["fid"],
            TokenFamily.revoked_at.is_(None),
            TokenFamily.user_uniquifier == User.fs_uniquifier,
        )
    ).one_or_none()
    return None if found is None else (found[0], found[1])


def secret_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def live(now: datetime) -> ColumnElement[bool]:
    """The condition of a key that works at `now`: not revoked, not expired,
    and made under its account's current fs_uniquifier."""
    account = (
        select(User.fs_uniquifier)
        .where(User.id == ApiKey.user_id)
        .correlate_except(User)
        .scalar_subquery()
    )
    return (
        ApiKey.revoked_at.is_(None)
        & (ApiKey.expires_at > now)
        & (ApiKey.user_uniquifier == account)
    )


def live_api_keys(user: User) -> list[ApiKey]:
    """The keys of `user` that work now, newest first."""
    return list(
        db.session.scalars(
            select(ApiKey)
            .where(ApiKey.user_id == user.id, live(utcnow()))
            .order_by(ApiKey.id.desc())
        )
    )


def create_api_key(
    user: User,
    name: str,
    scopes: list[str],
    lifetime: timedelta | None = None,
    *,
    uniquifier: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key for `user` that expires after `lifetime` (API_KEY_TTL_DAYS
    when None); the plain key is returned here and never again.

    The key belongs to `uniquifier`, the account's fs_uniquifier when the
    request authenticated (its current one when None): StaleSignIn when it has
    been replaced since; a key written after a racing change has replaced it
    never works (models/user.py: ApiKey).

    TooManyKeys when the user has API_KEYS_PER_USER live keys already. The
    user's row is locked while counting (PostgreSQL; SQLite lets one writer
    at a time), so concurrent requests cannot both take the last place.
    """
    config = current_app.config
    now = utcnow()
    account = db.session.scalar(
        select(User.fs_uniquifier).where(User.id == user.id).with_for_update()
    )
    uniquifier = uniquifier or account
    if account is None or uniquifier != account:
        db.session.rollback()
        raise StaleSignIn(
            "The account's password changed, or it was disabled, since this "
            "request's sign-in: sign in again."
        )
    count = db.session.scalar(
        select(func.count()).where(ApiKey.user_id == user.id, live(now))
    )
    if (count or 0) >= config["API_KEYS_PER_USER"]:
        db.session.rollback()
        raise TooManyKeys(
            f"You have {config['API_KEYS_PER_USER']} live API keys, the most "
            "allowed: revoke one first."
        )
    prefix = secrets.token_hex(PREFIX_BYTES)
    plain = f"{API_KEY_TAG}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        user_id=user.id,
        name=name,
        prefix=prefix,
        secret_hash=secret_hash(plain),
        scopes=sorted(set(scopes)),
        user_uniquifier=uniquifier,
        created_at=now,
        expires_at=now + (lifetime or timedelta(days=config["API_KEY_TTL_DAYS"])),
    )
    db.session.add(key)
    db.session.commit()
    return key, plain


def check_api_key(plain: str) -> ApiKey | None:
    """The live (unrevoked, unexpired) key `plain` is, of an active user, else None."""
    tag, _, rest = plain.partition("_")
    prefix, _, secret = rest.partition("_")
    if tag != API_KEY_TAG or len(prefix) != 2 * PREFIX_BYTES or not secret:
        return None
    key = db.session.scalar(
        select(ApiKey)
        .join(User, User.id == ApiKey.user_id)
        .options(contains_eager(ApiKey.user))
        .where(ApiKey.prefix == prefix, live(utcnow()), User.active.is_(True))
    )
    if key is None or not hmac.compare_digest(key.secret_hash, secret_hash(plain)):
        return None
    note_use(key)
    return key


def note_use(key: ApiKey) -> None:
    """Record when `key` was last used, at most once a minute.

    Best effort: a database that refuses writes (a read-only replica during a
    failover) must not turn an authenticated read into an error.
    """
    now = utcnow()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    try:
        db.session.execute(
            update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now)
        )
        db.session.commit()
    except DBAPIError:
        db.session.rollback()
    else:
        key.last_used_at = now


def revoke_api_key(key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        db.session.commit()
