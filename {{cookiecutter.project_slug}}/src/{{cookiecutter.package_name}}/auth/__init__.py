"""Authentication and authorization: accounts, tokens, API keys and roles.

- ``principal``: who is calling (bearer token or API key) and ``require``, the
  one decorator for scopes and roles.
- ``users``: what can happen to an account; ``passwords``: argon2id and the
  password policy; ``tokens`` and ``keys``: RS256 JWTs and their key pair.
- ``api``: the JSON endpoints under /api/v1/auth; ``commands``: the CLI.
- ``user_registered``: the signal sent when an account has been created.
"""

from __future__ import annotations

from flask import Flask

from ..resilience import identify_clients
from .commands import register_commands
from .keys import signing_keys
from .principal import (
    Principal,
    Sessions,
    accept_sessions,
    authenticated,
    client_owner,
    current_principal,
    known_principal,
    require,
)
from .users import user_registered


def init_app(app: Flask) -> None:
    """Load the signing keys; let the rate limiter count verified callers."""
    app.extensions["auth_keys"] = signing_keys(app)
    identify_clients(app, client_owner)
    register_commands(app)


__all__ = [
    "Principal",
    "Sessions",
    "accept_sessions",
    "authenticated",
    "current_principal",
    "init_app",
    "known_principal",
    "require",
    "user_registered",
]
