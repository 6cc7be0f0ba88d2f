"""Configuration classes, one per environment.

The environment is read when an application is created (``load_config``), never at
import time, so tests and tools can build apps with different settings in one
process.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

from flask.helpers import get_debug_flag
from sqlalchemy.engine import make_url

ENVIRONMENT_VARIABLE = "APP_ENV"
MIN_SECRET_KEY_LENGTH = 32
# Values people paste from examples; a production key must not be one of them.
PLACEHOLDER_SECRETS = frozenset(
    {
        "change-me",
        "changeme",
        "dev",
        "development",
        "please-change-me",
        "replace-me",
        "secret",
        "secret-key",
        "your-secret-key",
    }
)


class ConfigError(RuntimeError):
    """The configuration is unsafe or invalid; the message names the variable."""


def normalise_database_url(url: str) -> str:
    """Point bare PostgreSQL URLs at the psycopg 3 driver that the project ships."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def with_connect_timeout(url: str, seconds: int) -> str:
    """Add libpq's connect_timeout to a PostgreSQL URL that does not set one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return url
    parsed = parsed.update_query_dict({"connect_timeout": str(seconds)})
    return parsed.render_as_string(hide_password=False)


def env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """Read a positive integer variable, or fail naming it."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive integer")
    return value


class Config:
    """Settings shared by every environment."""

    NAME: ClassVar[str] = "base"

    DEBUG = False
    TESTING = False
    SECRET_KEY: str | None = None
    # Whether to make up a per-process SECRET_KEY when none is set. Sessions
    # signed with it end with the process: fine locally, never in production.
    EPHEMERAL_SECRET_KEY: ClassVar[bool] = False
    # Relative SQLite paths live in the instance folder (Flask-SQLAlchemy 3).
    SQLALCHEMY_DATABASE_URI = "sqlite:///app.db"
    # Check pooled connections before use: survives database restarts.
    SQLALCHEMY_ENGINE_OPTIONS: ClassVar[dict[str, Any]] = {"pool_pre_ping": True}
    # Seconds to wait for a PostgreSQL connection, so a health check or request
    # fails fast instead of hanging on an unreachable server.
    DATABASE_CONNECT_TIMEOUT = 5
    # Request bodies above this many bytes are refused with 413.
    MAX_CONTENT_LENGTH = 1024 * 1024
    # Where Flask-Migrate finds alembic.ini, env.py and versions/.
    MIGRATIONS_DIRECTORY = "migrations"

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.SECRET_KEY = environ.get("SECRET_KEY") or None
        if not self.SECRET_KEY and self.EPHEMERAL_SECRET_KEY:
            self.SECRET_KEY = secrets.token_urlsafe(48)
        database_url = self.database_url(environ)
        self.DATABASE_CONNECT_TIMEOUT = env_int(
            environ, "DATABASE_CONNECT_TIMEOUT", self.DATABASE_CONNECT_TIMEOUT
        )
        if database_url:
            self.SQLALCHEMY_DATABASE_URI = with_connect_timeout(
                normalise_database_url(database_url), self.DATABASE_CONNECT_TIMEOUT
            )
        self.MAX_CONTENT_LENGTH = env_int(
            environ, "MAX_CONTENT_LENGTH", self.MAX_CONTENT_LENGTH
        )
        self.MIGRATIONS_DIRECTORY = environ.get(
            "MIGRATIONS_DIRECTORY", self.MIGRATIONS_DIRECTORY
        )

    @staticmethod
    def database_url(environ: Mapping[str, str]) -> str | None:
        """The database this environment uses, when the environment names one."""
        return environ.get("DATABASE_URL")

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        """Refuse settings that are unsafe for this environment."""


class DevelopmentConfig(Config):
    """Local development: debug on, SQLite in the instance folder by default."""

    NAME = "development"
    DEBUG = True
    EPHEMERAL_SECRET_KEY = True


class TestingConfig(Config):
    """The test suite: in-memory SQLite unless TEST_DATABASE_URL names another."""

    NAME = "testing"
    TESTING = True
    EPHEMERAL_SECRET_KEY = True
    SQLALCHEMY_DATABASE_URI = "sqlite://"

    @staticmethod
    def database_url(environ: Mapping[str, str]) -> str | None:
        # Never DATABASE_URL: a test run must not touch a real database by accident.
        return environ.get("TEST_DATABASE_URL")


class ProductionConfig(Config):
    """Production: refuses to start with unsafe settings."""

    NAME = "production"

    @staticmethod
    def database_url(environ: Mapping[str, str]) -> str | None:
        url = environ.get("DATABASE_URL")
        if not url:
            raise ConfigError(
                "DATABASE_URL is not set: production needs an explicit database "
                "(for example postgresql://user:password@host:5432/name)"
            )
        return url

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        secret_key = config.get("SECRET_KEY")
        if not secret_key:
            raise ConfigError(
                "SECRET_KEY is not set: production needs a random secret of at least "
                f"{MIN_SECRET_KEY_LENGTH} characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        secret = str(secret_key)
        lowered = secret.strip().lower()
        if lowered in PLACEHOLDER_SECRETS or any(
            marker in lowered for marker in ("change-me", "changeme", "change_me")
        ):
            raise ConfigError("SECRET_KEY is a placeholder: generate a random one")
        if len(secret) < MIN_SECRET_KEY_LENGTH:
            raise ConfigError(
                f"SECRET_KEY is too short ({len(secret)} characters): production needs "
                f"at least {MIN_SECRET_KEY_LENGTH}"
            )
        if config.get("DEBUG") or get_debug_flag():
            raise ConfigError(
                "DEBUG is on (DEBUG or FLASK_DEBUG): the debugger must never run in "
                "production"
            )
        if config.get("TESTING"):
            raise ConfigError("TESTING is on: production must not run in testing mode")


CONFIGS: dict[str, type[Config]] = {
    config.NAME: config
    for config in (DevelopmentConfig, TestingConfig, ProductionConfig)
}


def load_config(
    name: str | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the settings for `name` (default: $APP_ENV, else development)."""
    env = os.environ if environ is None else environ
    chosen = name or env.get(ENVIRONMENT_VARIABLE) or DevelopmentConfig.NAME
    try:
        config_class = CONFIGS[chosen]
    except KeyError:
        valid = ", ".join(sorted(CONFIGS))
        raise ConfigError(
            f"{ENVIRONMENT_VARIABLE}={chosen!r} is not a known configuration "
            f"(choose one of: {valid})"
        ) from None
    return config_class(env)
