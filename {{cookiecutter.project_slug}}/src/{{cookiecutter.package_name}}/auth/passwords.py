"""Password hashing (argon2id) and the policy a new password must meet.

argon2id, the winner of the Password Hashing Competition and OWASP's first
choice, through argon2-cffi: its parameters are explicit (PASSWORD_HASH_* in
config.py), every hash records the parameters it was made with, and
``check_needs_rehash`` tells when they changed, so a login upgrades old hashes.
Werkzeug's scrypt would do too, but offers neither of the last two.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
from importlib.resources import files

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

# Verified against when no account matches, so that an unknown e-mail costs
# the same time as a wrong password (no account enumeration by timing).
DUMMY_PASSWORD = "not the password of any account"  # noqa: S105 - a decoy
MAX_LENGTH = 1024
# Marks a stored hash that no password matches.
UNUSABLE = "!"
EDGES = re.compile(r"^[\W\d_]+|[\W\d_]+$")


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of passwords too common to accept (lowercase)."""
    text = files(__package__).joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def hasher() -> PasswordHasher:
    """The hasher for the app's PASSWORD_HASH_* parameters (one per app)."""
    found: PasswordHasher | None = current_app.extensions.get("password_hasher")
    if found is None:
        config = current_app.config
        found = PasswordHasher(
            time_cost=config["PASSWORD_HASH_TIME_COST"],
            memory_cost=config["PASSWORD_HASH_MEMORY_KIB"],
            parallelism=config["PASSWORD_HASH_PARALLELISM"],
        )
        current_app.extensions["password_hasher"] = found
    return found


def hash_password(password: str) -> str:
    return hasher().hash(password)


def unusable_hash() -> str:
    """A stored hash no password matches (an account without a password)."""
    return UNUSABLE + secrets.token_hex(16)


@functools.cache
def dummy_hash(time_cost: int, memory_cost: int, parallelism: int) -> str:
    return PasswordHasher(time_cost, memory_cost, parallelism=parallelism).hash(
        DUMMY_PASSWORD
    )


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether `password` matches `stored_hash`; None (no account) never does,
    nor does an unusable hash (an account without a password).

    Without an account a decoy hash with the same parameters is checked, so
    both failures take the same time.
    """
    chosen = hasher()
    if stored_hash is None or stored_hash.startswith(UNUSABLE):
        decoy = dummy_hash(chosen.time_cost, chosen.memory_cost, chosen.parallelism)
        with contextlib.suppress(VerificationError):
            chosen.verify(decoy, password)
        return False
    try:
        return chosen.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """The hash was made with other parameters than the configured ones."""
    return hasher().check_needs_rehash(stored_hash)


def weakness(password: str, *, email: str = "") -> str | None:
    """Why `password` may not be used, or None when it may.

    At least PASSWORD_MIN_LENGTH characters (NIST SP 800-63B: length, not
    composition rules), at most 1024, not on the common list (also with the
    digits and symbols around it removed: "Password123!"), and not the
    e-mail address or its local part.
    """
    minimum: int = current_app.config["PASSWORD_MIN_LENGTH"]
    if len(password) < minimum:
        return f"must be at least {minimum} characters long"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters long"
    if not password.strip():
        return "must not be only spaces"
    lowered = password.lower()
    common = common_passwords()
    core = EDGES.sub("", lowered)
    if lowered in common or core in common or len(set(lowered)) <= 2:
        return "is too common; choose one that is not on lists of leaked passwords"
    local_part = email.lower().partition("@")[0]
    # The address, or its local part with only digits and symbols around it.
    if email and (
        lowered == email.lower()
        or (local_part and not EDGES.sub("", lowered.replace(local_part, "")))
    ):
        return "must not be your e-mail address"
    return None
