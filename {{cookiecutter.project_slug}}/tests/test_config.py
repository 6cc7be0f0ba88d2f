"""Configuration classes and the production guards."""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }} import config as settings
from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    check_server_config,
    database_uri,
    load_config,
    server_config_name,
)
from {{ cookiecutter.package_name }}.secret_key import weakness

from conftest import AppFactory, production_settings

PRODUCTION_ENV = production_settings()
GOOD_SECRET = PRODUCTION_ENV["SECRET_KEY"]


@pytest.fixture(autouse=True)
def production_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A safe production environment; each test breaks one variable."""
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    monkeypatch.delenv("APP_ENV", raising=False)
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(PRODUCTION_ENV)


def test_production_starts_with_safe_settings(make_app: AppFactory) -> None:
    app = make_app("production")
    assert not app.debug
    assert not app.testing
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    assert url.render_as_string(hide_password=False).startswith(
        "postgresql+psycopg://app:pw@db.internal:5432/app?"
    )
    assert url.query["connect_timeout"] == "5"


def test_production_defaults_are_the_safe_ones(make_app: AppFactory) -> None:
    config = make_app("production").config
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["SESSION_COOKIE_HTTPONLY"] is True
    assert config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert config["PREFERRED_URL_SCHEME"] == "https"
    assert "Strict-Transport-Security" in config["SECURITY_HEADERS"]


def test_development_sends_no_hsts(make_app: AppFactory) -> None:
    assert (
        "Strict-Transport-Security"
        not in (make_app("development").config["SECURITY_HEADERS"])
    )


def test_trusted_hosts_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv("TRUSTED_HOSTS", "api.example.com, .example.org,")
    app = make_app("production")
    assert app.config["TRUSTED_HOSTS"] == ["api.example.com", ".example.org"]
    client = app.test_client()
    refused = client.get("/api/openapi.json", headers={"Host": "evil.example.net"})
    assert refused.status_code == 400
    assert refused.mimetype == "application/problem+json"
    trusted = client.get("/api/openapi.json", headers={"Host": "api.example.com"})
    assert trusted.status_code == 200


def test_probes_answer_whatever_the_host(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    # Orchestrators probe a pod by its address, which TRUSTED_HOSTS never names.
    monkeypatch.setenv("TRUSTED_HOSTS", ".example.org")
    client = make_app("production").test_client()
    for path in ("/health/live", "/health/ready", "/health/dependencies"):
        assert client.get(path, headers={"Host": "10.1.2.3:8000"}).status_code in {
            200,
            503,
        }, path
    assert client.get("/health/live", headers={"Host": "10.1.2.3"}).json == {
        "status": "pass",
        "checks": {},
    }


def test_the_flag_is_not_a_setting() -> None:
    assert "ephemeral_secret_key" not in settings.DevelopmentConfig({}).settings()


def test_production_refuses_a_missing_secret_key(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.delenv("SECRET_KEY")
    with pytest.raises(ConfigError, match=r"^SECRET_KEY is not set"):
        make_app("production")


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("change-me", "is a placeholder"),
        ("CHANGEME", "is a placeholder"),
        ("please-change-me-before-deploying-this-app", "is a placeholder"),
        ("secret", "is too short"),
        ("dev", "is too short"),
        ("x7Hq2" * 6, r"is too short \(30 characters"),
        # Padding does not count toward the length.
        ("    " + "x7Hq2" * 6 + "    ", r"is too short \(30 characters"),
        ("   ", "is not set"),
        ("a" * 64, "uses only 1 distinct characters"),
        ("x7Hq2" * 8, "uses only 5 distinct characters"),
        ("0123456789abcdef" * 2, "repeats a pattern"),
        ("abcdefghijklmnopqrstuvwxyz0123456789", "repeats a pattern or runs through"),
        ("this-is-my-super-secret-key-for-dev-use", "is made of common words"),
        ("The quick brown fox jumps over the lazy dog", "contains whitespace"),
        ("correct horse battery staple mauve kitten", "contains whitespace"),
        ("qwertyuiopasdfghjklzxcvbnm1234567890", "repeats a pattern or runs"),
        ("QwErTyUiOp[]AsDfGhJkL;'ZxCvBnM,./0", "repeats a pattern or runs"),
        ("ThisIsMySuperSecretKeyForDevUse2024!!", "is made of common words"),
        ("my_development_secret_key_change_before_prod", "is made of common words"),
    ],
)
def test_production_refuses_a_weak_secret_key(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory, secret: str, reason: str
) -> None:
    monkeypatch.setenv("SECRET_KEY", secret)
    with pytest.raises(ConfigError, match=rf"^SECRET_KEY {reason}"):
        make_app("production")


@pytest.mark.parametrize(
    "make_key",
    [
        lambda data: base64.urlsafe_b64encode(data).decode().rstrip("="),
        lambda data: base64.b64encode(data).decode(),
        lambda data: data.hex(),
        lambda data: data[:16].hex(),
        lambda data: str(uuid.UUID(bytes=data[:16], version=4)),
    ],
    ids=["token_urlsafe", "openssl-base64", "token_hex", "token_hex-16", "uuid4"],
)
def test_keys_from_the_usual_generators_pass(
    make_key: Callable[[bytes], str],
) -> None:
    # Deterministic random bytes, so this test cannot flake.
    generator = random.Random(20261123)
    for _ in range(300):
        key = make_key(generator.randbytes(48))
        assert weakness(key) is None, key


def test_production_refuses_debug(make_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match=r"^DEBUG is on"):
        make_app("production", DEBUG=True)


def test_production_refuses_flask_debug(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(ConfigError, match=r"^DEBUG is on"):
        make_app("production")


def test_production_refuses_testing_mode(make_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match=r"^TESTING is on"):
        make_app("production", TESTING=True)


def test_production_needs_an_explicit_database(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL is not set"):
        make_app("production")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "DATABASE_URL is not a database URL: use postgresql://"),
        ("", "DATABASE_URL is not set"),
        ("mysql://app:pw@db/app", "DATABASE_URL uses mysql://, which this project"),
        ("postgresql+psycopg2://db/app", "uses postgresql\\+psycopg2://"),
        ("oracle://db/app", "has no driver for: use postgresql:// \\(psycopg 3\\)"),
        ("postgresql://u:pw@db:notaport/app", "DATABASE_URL is not a database URL"),
    ],
)
def test_a_bad_database_url_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory, url: str, message: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError, match=message) as raised:
        make_app("production")
    assert "pw" not in raised.value.message
    assert "\n" not in raised.value.message


def test_a_bad_test_database_url_names_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"^TEST_DATABASE_URL uses mysql://"):
        settings.TestingConfig({"TEST_DATABASE_URL": "mysql://db/test"})


def test_servers_run_production_unless_told_otherwise() -> None:
    assert server_config_name({}) == "production"
    assert server_config_name({"APP_ENV": "development"}) == "development"


def test_the_server_check_validates_without_building_an_app() -> None:
    config = check_server_config(PRODUCTION_ENV)
    assert isinstance(config, settings.ProductionConfig)
    with pytest.raises(ConfigError, match=r"^SECRET_KEY is not set"):
        check_server_config({"DATABASE_URL": "sqlite://"})


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
    url = make_url(config.SQLALCHEMY_DATABASE_URI)
    assert (url.drivername, url.host, url.database) == (
        "postgresql+psycopg",
        "127.0.0.1",
        "test",
    )


def test_postgresql_connections_are_bounded_in_time() -> None:
    config = settings.TestingConfig(
        {
            "TEST_DATABASE_URL": "postgresql://u:p@127.0.0.1/test",
            "DATABASE_CONNECT_TIMEOUT": "2",
            "DATABASE_STATEMENT_TIMEOUT": "7",
        }
    )
    assert dict(make_url(config.SQLALCHEMY_DATABASE_URI).query) == {
        "connect_timeout": "2",
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
        "tcp_user_timeout": "60000",
        "options": "-c statement_timeout=7000",
    }


def test_settings_in_the_url_are_kept() -> None:
    url = (
        "postgresql+psycopg://127.0.0.1/test?connect_timeout=30"
        "&options=-c%20search_path%3Dapp"
    )
    config = settings.TestingConfig({"TEST_DATABASE_URL": url})
    query = make_url(config.SQLALCHEMY_DATABASE_URI).query
    assert query["connect_timeout"] == "30"
    assert query["options"] == "-c search_path=app"


def test_numeric_libpq_settings_must_be_numbers() -> None:
    with pytest.raises(ConfigError, match=r"sets connect_timeout to something other"):
        settings.TestingConfig(
            {"TEST_DATABASE_URL": "postgresql://db/test?connect_timeout=abc"}
        )


def test_other_databases_get_no_libpq_settings() -> None:
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
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("sqlite:///app.db", "sqlite:///app.db"),
        ("sqlite+pysqlite://", "sqlite+pysqlite://"),
    ],
)
def test_database_urls_get_the_installed_driver(url: str, expected: str) -> None:
    uri = database_uri("DATABASE_URL", url, {"connect": 5, "statement": 30})
    assert uri.split("?")[0] == expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_CONTENT_LENGTH", "lots", "is not an integer"),
        ("MAX_CONTENT_LENGTH", "0", "must be a positive integer"),
        ("HEALTH_CHECK_TIMEOUT", "soon", "is not a number of seconds"),
        ("HEALTH_CHECK_TIMEOUT", "-1", "must be a positive number of seconds"),
        ("HEALTH_CHECK_TIMEOUT", "inf", "must be a positive number of seconds"),
        ("HEALTH_CHECK_TIMEOUT", "1e20", "must be a positive number of seconds"),
        ("PRICING_TIMEOUT", "61", "must be a positive number of seconds, at most 60"),
        ("DATABASE_STATEMENT_TIMEOUT", "3000000", "is more than the 86400 allowed"),
        ("DATABASE_CONNECT_TIMEOUT", "301", "is more than the 300 allowed"),
        ("IDEMPOTENCY_TTL", "99999999", "is more than the 2592000 allowed"),
        ("API_DOCS_ENABLED", "maybe", "is not a yes/no value"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}='{value}' {message}"):
        settings.TestingConfig({name: value})


@pytest.mark.parametrize("url", ["ftp://pricing", "not a url", "https://", "http:///x"])
def test_the_pricing_url_must_be_http(url: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^PRICING_URL is not an http:// or https://"
    ):
        settings.TestingConfig({"PRICING_URL": url})
    assert (
        settings.TestingConfig(
            {"PRICING_URL": "https://p.internal:8443/v1"}
        ).PRICING_URL
        == "https://p.internal:8443/v1"
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sslmode=bogus", "sets sslmode to something other than one of allow, disable"),
        ("target_session_attrs=rw", "sets target_session_attrs to something other"),
        ("sslmdoe=require", "has a setting libpq does not know: 'sslmdoe'"),
    ],
)
def test_libpq_settings_are_checked_at_start(query: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^DATABASE_URL {message}"):
        database_uri(
            "DATABASE_URL",
            f"postgresql://u:pw@h/db?{query}",
            {"connect": 5, "statement": 30},
        )
    uri = database_uri(
        "DATABASE_URL",
        "postgresql://u@h/db?sslmode=verify-full",
        {"connect": 5, "statement": 30},
    )
    assert "sslmode=verify-full" in uri


def test_integers_can_have_a_maximum() -> None:
    assert settings.env_int({"N": "8"}, "N", 1, maximum=8) == 8
    with pytest.raises(ConfigError, match=r"^N='9' is more than the 8 allowed"):
        settings.env_int({"N": "9"}, "N", 1, maximum=8)


def test_settings_are_parsed_from_the_environment() -> None:
    config = settings.TestingConfig(
        {"HEALTH_CHECK_TIMEOUT": "0.5", "API_DOCS_ENABLED": "off"}
    )
    assert config.HEALTH_CHECK_TIMEOUT == 0.5
    assert config.API_DOCS_ENABLED is False
    assert settings.TestingConfig({"API_DOCS_ENABLED": "Yes"}).API_DOCS_ENABLED


def test_empty_settings_keep_their_defaults() -> None:
    config = settings.TestingConfig(
        {"MAX_CONTENT_LENGTH": "", "HEALTH_CHECK_TIMEOUT": " ", "TRUSTED_HOSTS": ","}
    )
    assert config.MAX_CONTENT_LENGTH == settings.TestingConfig.MAX_CONTENT_LENGTH
    assert config.HEALTH_CHECK_TIMEOUT == settings.TestingConfig.HEALTH_CHECK_TIMEOUT
    assert config.TRUSTED_HOSTS is None
