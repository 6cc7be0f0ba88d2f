"""Configuration classes and the production guards."""

from __future__ import annotations

import pytest

from {{ cookiecutter.package_name }} import config as settings
from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    load_config,
    normalise_database_url,
)

GOOD_SECRET = "k" * 8 + "3vQ9-xT_4mWz7Lr2Pb6Yc1Nd8Hs5Jf0Ga"
PRODUCTION_ENV = {
    "SECRET_KEY": GOOD_SECRET,
    "DATABASE_URL": "postgresql://app:pw@db.internal:5432/app",
}


@pytest.fixture(autouse=True)
def production_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A safe production environment; each test breaks one variable."""
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(PRODUCTION_ENV)


def test_production_starts_with_safe_settings() -> None:
    app = create_app("production")
    assert not app.debug
    assert not app.testing
    assert app.config["SQLALCHEMY_DATABASE_URI"] == (
        "postgresql+psycopg://app:pw@db.internal:5432/app?connect_timeout=5"
    )


def test_production_refuses_a_missing_secret_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SECRET_KEY")
    with pytest.raises(ConfigError, match=r"^SECRET_KEY is not set"):
        create_app("production")


@pytest.mark.parametrize("secret", ["change-me", "CHANGEME", "secret", "dev"])
def test_production_refuses_a_placeholder_secret_key(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("SECRET_KEY", secret)
    with pytest.raises(ConfigError, match=r"^SECRET_KEY is a placeholder"):
        create_app("production")


def test_production_refuses_a_placeholder_inside_a_long_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_KEY", "please-change-me-before-deploying-this-app")
    with pytest.raises(ConfigError, match=r"^SECRET_KEY is a placeholder"):
        create_app("production")


def test_production_refuses_a_short_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "x7Hq2" * 6)
    with pytest.raises(
        ConfigError, match=r"^SECRET_KEY is too short \(30 characters\)"
    ):
        create_app("production")


def test_production_refuses_debug() -> None:
    with pytest.raises(ConfigError, match=r"^DEBUG is on"):
        create_app("production", DEBUG=True)


def test_production_refuses_flask_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(ConfigError, match=r"^DEBUG is on"):
        create_app("production")


def test_production_refuses_testing_mode() -> None:
    with pytest.raises(ConfigError, match=r"^TESTING is on"):
        create_app("production", TESTING=True)


def test_production_needs_an_explicit_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL is not set"):
        create_app("production")


def test_development_generates_a_secret_key_when_none_is_set() -> None:
    first = settings.DevelopmentConfig({})
    second = settings.DevelopmentConfig({})
    assert first.SECRET_KEY
    assert len(first.SECRET_KEY) >= 32
    assert first.SECRET_KEY != second.SECRET_KEY


def test_testing_needs_no_secret_key_either() -> None:
    assert len(settings.TestingConfig({}).SECRET_KEY or "") >= 32


def test_production_never_makes_up_a_secret_key() -> None:
    config = settings.ProductionConfig({"DATABASE_URL": "sqlite://"})
    assert config.SECRET_KEY is None


def test_development_uses_the_configured_secret_key() -> None:
    config = settings.DevelopmentConfig({"SECRET_KEY": "from-the-environment"})
    assert config.SECRET_KEY == "from-the-environment"


def test_testing_ignores_database_url() -> None:
    config = settings.TestingConfig({"DATABASE_URL": "postgresql://prod/db"})
    assert config.SQLALCHEMY_DATABASE_URI == "sqlite://"


def test_testing_uses_test_database_url() -> None:
    config = settings.TestingConfig(
        {"TEST_DATABASE_URL": "postgresql://127.0.0.1/test"}
    )
    assert config.SQLALCHEMY_DATABASE_URI == (
        "postgresql+psycopg://127.0.0.1/test?connect_timeout=5"
    )


def test_postgresql_connections_time_out() -> None:
    config = settings.TestingConfig(
        {
            "TEST_DATABASE_URL": "postgresql://u:p@127.0.0.1/test",
            "DATABASE_CONNECT_TIMEOUT": "2",
        }
    )
    assert config.SQLALCHEMY_DATABASE_URI == (
        "postgresql+psycopg://u:p@127.0.0.1/test?connect_timeout=2"
    )


def test_an_explicit_connect_timeout_is_kept() -> None:
    url = "postgresql+psycopg://127.0.0.1/test?connect_timeout=30"
    config = settings.TestingConfig({"TEST_DATABASE_URL": url})
    assert url == config.SQLALCHEMY_DATABASE_URI


def test_other_databases_get_no_connect_timeout() -> None:
    config = settings.TestingConfig({"TEST_DATABASE_URL": "sqlite:///other.db"})
    assert config.SQLALCHEMY_DATABASE_URI == "sqlite:///other.db"


def test_load_config_reads_app_env() -> None:
    config = load_config(environ={"APP_ENV": "production", **PRODUCTION_ENV})
    assert isinstance(config, settings.ProductionConfig)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///app.db", "sqlite:///app.db"),
    ],
)
def test_normalise_database_url(url: str, expected: str) -> None:
    assert normalise_database_url(url) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [("lots", "is not an integer"), ("0", "must be a positive integer")],
)
def test_bad_integer_settings_name_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^MAX_CONTENT_LENGTH='{value}' {message}"):
        settings.TestingConfig({"MAX_CONTENT_LENGTH": value})


def test_empty_integer_setting_keeps_the_default() -> None:
    config = settings.TestingConfig({"MAX_CONTENT_LENGTH": ""})
    assert config.MAX_CONTENT_LENGTH == settings.TestingConfig.MAX_CONTENT_LENGTH
