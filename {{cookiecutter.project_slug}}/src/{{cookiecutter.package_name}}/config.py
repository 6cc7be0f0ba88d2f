"""Configuration classes, one per environment.

The environment is read when an application is created (``load_config``), never at
import time, so tests and tools can build apps with different settings in one
process.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar
{%- if cookiecutter.use_celery == "yes" %}
from urllib.parse import urlsplit
{%- endif %}

import click
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.cli import run_command
from flask.helpers import get_debug_flag
from limits import parse_many
from psycopg.conninfo import make_conninfo
from redis import ConnectionPool
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from .secret_key import weakness

ENVIRONMENT_VARIABLE = "APP_ENV"
# What production servers (wsgi.py, gunicorn.conf.py) run when APP_ENV is unset.
SERVER_CONFIG = "production"
SERVER_COMMAND = "gunicorn -c gunicorn.conf.py wsgi:application"
RANDOM_KEY_COMMAND = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
RSA_KEY_COMMAND = "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072"
MIN_RSA_KEY_BITS = 2048
# The URL schemes this project has drivers for, and the SQLAlchemy URL each becomes.
DATABASE_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
}
SUPPORTED_DATABASES = "postgresql:// (psycopg 3) or sqlite://"
# Seconds: PostgreSQL's statement_timeout is milliseconds in a 32-bit integer.
MAX_CONNECT_TIMEOUT = 300
MAX_STATEMENT_TIMEOUT = 24 * 60 * 60
# The longest lifetime, in days, an API key can be given (API_KEY_MAX_TTL_DAYS).
MAX_API_KEY_DAYS = 3650
# libpq settings whose values libpq checks only when it connects: checked here,
# so a typo is a start-up error, not a 503 on every request.
LIBPQ_CHOICES = {
    "sslmode": frozenset(
        {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
    ),
    "target_session_attrs": frozenset(
        {"any", "read-write", "read-only", "primary", "standby", "prefer-standby"}
    ),
}
{%- if cookiecutter.use_celery == "yes" %}
# Brokers Celery reaches with this project's dependencies (redis, py-amqp).
BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp"})
MAIL_BACKENDS = frozenset({"console", "file", "smtp"})
MAIL_SECURITY = frozenset({"none", "starttls", "tls"})
{%- endif %}
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
LOG_FORMATS = frozenset({"json", "console"})
# A METRICS_TOKEN shorter than this is refused in production.
MIN_METRICS_TOKEN_LENGTH = 32
{%- if cookiecutter.use_opentelemetry == "yes" %}
# Tracing (observability/tracing.py): the span exporters this project ships
# (OTEL_TRACES_EXPORTER), the SDK's samplers (OTEL_TRACES_SAMPLER), and the
# parts it instruments (OTEL_PYTHON_DISABLED_INSTRUMENTATIONS turns some off).
TRACE_EXPORTERS = frozenset({"otlp", "console", "none"})
TRACE_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
INSTRUMENTATIONS = frozenset({"flask", "sqlalchemy", "urllib3", "redis", "celery"})
# The traces endpoint wins over the general one, as in the SDK.
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
OTLP_TIMEOUTS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
# The request URLs not traced, as Flask's instrumentation reads them.
EXCLUDED_URLS = ("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")
{%- endif %}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class ConfigError(click.ClickException):
    """The configuration is unsafe or invalid; the message names the variable.

    A ClickException, so ``flask`` prints it as one line and exits with status 1;
    gunicorn.conf.py does the same before any worker starts.
    """


def database_uri(variable: str, url: str, timeouts: Mapping[str, int]) -> str:
    """Check a database URL from `variable` and complete it for SQLAlchemy.

    Bare PostgreSQL URLs get the psycopg 3 driver, and libpq settings that
    bound how long a dead or stuck server can hold a request (each unless the
    URL sets it). The URL is never echoed in an error: it may hold a password.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"{variable} is not a database URL: use {SUPPORTED_DATABASES}, for "
            "example postgresql://user:password@host:5432/name"
        ) from None
    driver = DATABASE_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"{variable} uses {parsed.drivername}://, which this project has no "
            f"driver for: use {SUPPORTED_DATABASES}"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("postgresql"):
        check_libpq_settings(variable, parsed.query)
        for name, value in postgresql_settings(timeouts).items():
            given = parsed.query.get(name)
            if given is None:
                parsed = parsed.update_query_dict({name: value})
            elif name in NUMERIC_LIBPQ_SETTINGS and not str(given).isdigit():
                raise ConfigError(
                    f"{variable} sets {name} to something other than a whole number"
                )
    return parsed.render_as_string(hide_password=False)


def check_libpq_settings(variable: str, query: Mapping[str, Any]) -> None:
    """Refuse settings in the URL that libpq does not know, or values it refuses."""
    settings = {name: str(value) for name, value in query.items()}
    for name in settings:
        try:
            make_conninfo("", **{name: "1"})
        except psycopg.ProgrammingError:
            # The name only: a value in a database URL may be a password.
            raise ConfigError(
                f"{variable} has a setting libpq does not know: {name!r}"
            ) from None
    for name, choices in LIBPQ_CHOICES.items():
        if name in settings and settings[name] not in choices:
            raise ConfigError(
                f"{variable} sets {name} to something other than one of "
                f"{', '.join(sorted(choices))}"
            )


# libpq settings the project fills in; those whose value must be a number.
NUMERIC_LIBPQ_SETTINGS = frozenset(
    {
        "connect_timeout",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    }
)


def postgresql_settings(timeouts: Mapping[str, int]) -> dict[str, str]:
    """libpq settings that turn a dead or stuck server into an error in bounded time.

    - connect_timeout: give up connecting after that many seconds;
    - keepalives and tcp_user_timeout: notice a vanished server (a network
      partition) within about a minute, idle or mid-query, instead of the
      kernel's two hours or fifteen minutes;
    - statement_timeout: the server cancels a statement that runs, or waits on
      a lock, for longer (migrations lift it: see migrations/env.py).
    """
    return {
        "connect_timeout": str(timeouts["connect"]),
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
        "tcp_user_timeout": "60000",
        "options": f"-c statement_timeout={timeouts['statement'] * 1000}",
    }


def rsa_signing_key(pem: bytes, source: str) -> rsa.RSAPrivateKey:
    """`pem` as the RS256 signing key, or a ConfigError naming `source`."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        problem = "is not an unencrypted PEM private key"
    else:
        if not isinstance(key, rsa.RSAPrivateKey):
            problem = "is not an RSA key (tokens are signed with RS256)"
        elif key.key_size < MIN_RSA_KEY_BITS:
            problem = f"has {key.key_size} bits, fewer than RS256's {MIN_RSA_KEY_BITS}"
        else:
            return key
    raise ConfigError(f"{source} {problem}: make one with `{RSA_KEY_COMMAND}`")


def signing_key(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """JWT_PRIVATE_KEY, or the contents of JWT_PRIVATE_KEY_FILE; and which it was."""
    source = "JWT_PRIVATE_KEY"
    pem = environ.get(source, "").strip() or None
    if pem is None and (path := environ.get("JWT_PRIVATE_KEY_FILE", "").strip()):
        source = f"JWT_PRIVATE_KEY_FILE ({path})"
        try:
            with open(path, encoding="ascii") as file:  # noqa: PTH123 - plain read
                pem = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"{source} cannot be read: {error.__class__.__name__}"
            ) from None
    if pem is not None:
        rsa_signing_key(pem.encode(), source)
    return pem, source


{%- if cookiecutter.use_oauth == "yes" %}


# Metadata (discovery) URLs of providers that need no OIDC_<NAME>_METADATA_URL.
WELL_KNOWN_PROVIDERS = {
    "google": "https://accounts.google.com/.well-known/openid-configuration",
}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def oidc_providers(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The providers of OIDC_PROVIDERS (default: google) that have credentials."""
    names = [
        name.strip().lower()
        for name in environ.get("OIDC_PROVIDERS", "google").split(",")
        if name.strip()
    ]
    providers = {}
    for name in names:
        if not name.isascii() or not name.isalnum():
            raise ConfigError(
                f"OIDC_PROVIDERS names {name!r}: use letters and digits only"
            )
        prefix = f"OIDC_{name.upper()}_"
        client_id = environ.get(f"{prefix}CLIENT_ID", "").strip()
        secret = environ.get(f"{prefix}CLIENT_SECRET", "").strip()
        if not client_id or not secret:
            continue
        variable = f"{prefix}METADATA_URL"
        metadata_url = environ.get(variable, "").strip() or WELL_KNOWN_PROVIDERS.get(
            name, ""
        )
        try:
            parsed = parse_url(metadata_url)
        except LocationParseError:
            parsed = None
        secure = parsed is not None and (
            parsed.scheme == "https"
            or (parsed.scheme == "http" and parsed.host in LOOPBACK_HOSTS)
        )
        if not secure:
            raise ConfigError(
                f"{variable} must be the provider's https:// discovery URL "
                "(.well-known/openid-configuration)"
            )
        providers[name] = {
            "client_id": client_id,
            "client_secret": secret,
            "metadata_url": metadata_url,
        }
    return providers


def public_url(environ: Mapping[str, str]) -> str | None:
    """PUBLIC_URL: an http:// or https:// origin (no path, query or login)."""
    raw = environ.get("PUBLIC_URL", "").strip().rstrip("/")
    if not raw:
        return None
    try:
        parsed = parse_url(raw)
    except LocationParseError:
        parsed = None
    if (
        parsed is None
        or parsed.scheme not in {"http", "https"}
        or not parsed.host
        or parsed.auth
        or parsed.path
        or parsed.query is not None
        or parsed.fragment is not None
    ):
        raise ConfigError(
            f"PUBLIC_URL={raw!r} is not an origin such as https://app.example.com "
            "(a scheme and a host, no path)"
        )
    return raw
{%- endif %}


def cors_origins(environ: Mapping[str, str]) -> list[str] | None:
    """CORS_ORIGINS: ``*`` alone, or origins such as https://app.example.com."""
    origins = env_list(environ, "CORS_ORIGINS")
    if not origins or origins == ["*"]:
        return origins
    for origin in origins:
        try:
            parsed = parse_url(origin)
        except LocationParseError:
            parsed = None
        if (
            parsed is None
            or parsed.scheme not in {"http", "https"}
            or not parsed.host
            or (parsed.path or "") not in {"", "/"}
            or parsed.query
            or origin.endswith("/")
        ):
            raise ConfigError(
                f"CORS_ORIGINS has {origin!r}: give origins as scheme://host[:port] "
                "(no path), separated by commas, or * alone"
            )
    return origins


def env_int(
    environ: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int = 1,
    maximum: int | None = None,
) -> int:
    """Read an integer variable (positive unless `minimum` says otherwise)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else f"at least {minimum}"
        raise ConfigError(f"{name}={raw!r} must be {kind}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={raw!r} is more than the {maximum} allowed")
    return value


def env_rate_limit(environ: Mapping[str, str], name: str, default: str) -> str:
    """Read a rate limit ("30 per minute", "5/second;100/hour"), or fail naming it."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a rate limit (for example: 30 per minute)"
        ) from None
    return raw


def redis_url(environ: Mapping[str, str], variable: str) -> str | None:
    """A Redis URL (redis://, rediss:// or unix://) from `variable`, or None."""
    url = environ.get(variable, "").strip()
    if not url:
        return None
    try:
        ConnectionPool.from_url(url)  # parses only; connects on first use
    except ValueError:
        raise ConfigError(
            f"{variable} is not a Redis URL: use redis://host:6379/0, "
            "rediss:// (TLS) or unix:///path/to/socket"
        ) from None
    return url


{%- if cookiecutter.use_celery == "yes" %}


def broker_url(environ: Mapping[str, str], variable: str) -> str | None:
    """A Celery broker URL (Redis or RabbitMQ) from `variable`, or None."""
    url = environ.get(variable, "").strip()
    if not url:
        return None
    scheme, separator, _rest = url.partition("://")
    try:
        parts = urlsplit(url)
        valid = bool(separator and scheme.lower() in BROKER_SCHEMES and parts.hostname)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"{variable} is not a broker URL: use redis://host:6379/0, rediss:// "
            "(TLS), or amqp://user:password@host:5672/vhost for RabbitMQ"
        )
    return url


{%- endif %}


def env_choice(
    environ: Mapping[str, str], name: str, default: str, choices: frozenset[str]
) -> str:
    """Read one of `choices`, or fail naming the variable and the choices."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of: {', '.join(sorted(choices))}")
    return raw


def networks(
    environ: Mapping[str, str], name: str, default: tuple[Network, ...]
) -> tuple[Network, ...]:
    """Read a comma-separated list of networks (10.0.0.0/8, ::1), or fail naming it.

    Set and empty means none.
    """
    if name not in environ:
        return default
    found = []
    for item in env_list(environ, name) or []:
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name}: {item!r} is not a network (for example 10.0.0.0/8 or ::1)"
            ) from None
    return tuple(found)


def env_seconds(
    environ: Mapping[str, str], name: str, default: float, *, maximum: float
) -> float:
    """Read a positive number of seconds, at most `maximum`, or fail naming it."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 < value <= maximum:
        raise ConfigError(
            f"{name}={raw!r} must be a positive number of seconds, at most {maximum:g}"
        )
    return value


def http_url(environ: Mapping[str, str], name: str) -> str | None:
    """An http:// or https:// URL with a host from `name`, or None when unset."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        parsed = parse_url(raw)
    except LocationParseError:
        parsed = None
    if parsed is None or parsed.scheme not in {"http", "https"} or not parsed.host:
        raise ConfigError(
            f"{name} is not an http:// or https:// URL (for example "
            "https://pricing.internal:8443)"
        )
    return raw


def env_bool(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    """Read a yes/no variable (1/0, true/false, yes/no, on/off), or fail naming it."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no value (use true or false)")


def env_list(environ: Mapping[str, str], name: str) -> list[str] | None:
    """Read a comma-separated list; None when the variable is unset or empty."""
    items = [item.strip() for item in environ.get(name, "").split(",")]
    return [item for item in items if item] or None


{%- if cookiecutter.use_opentelemetry == "yes" %}


def trace_exporters(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Where spans go: OTEL_TRACES_EXPORTER's exporters, or, when it is unset,
    otlp if an OTLP endpoint is set and none otherwise (the SDK alone would
    send to localhost:4318 and log an error every few seconds without a
    collector there)."""
    for variable in OTLP_ENDPOINTS:
        http_url(environ, variable)
    for variable in OTLP_TIMEOUTS:
        # Seconds for the Python SDK (the specification says milliseconds: a
        # 10000 meant as 10 s would hold a stopping worker for hours).
        env_seconds(environ, variable, 10, maximum=60)
    for variable in OTLP_PROTOCOLS:
        protocol = environ.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ConfigError(
                f"{variable}={protocol!r}: this project ships the OTLP exporter "
                "for http/protobuf only (grpc needs "
                "opentelemetry-exporter-otlp-proto-grpc)"
            )
    check_batch_settings(environ)
    names = [name.lower() for name in env_list(environ, "OTEL_TRACES_EXPORTER") or []]
    if not names:
        endpoint = any(environ.get(variable, "").strip() for variable in OTLP_ENDPOINTS)
        return ("otlp",) if endpoint else ()
    if unknown := sorted(set(names) - TRACE_EXPORTERS):
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: use "
            f"{', '.join(sorted(TRACE_EXPORTERS))} (comma-separated)"
        )
    return tuple(dict.fromkeys(name for name in names if name != "none"))


def check_batch_settings(environ: Mapping[str, str]) -> None:
    """The batch span processor's OTEL_BSP_* settings (milliseconds and span
    counts). The SDK checks them only when a process ends its first span: a
    bad value would fail that request, and every one after it."""
    queue = env_int(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    batch = env_int(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
    env_int(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000)
    env_int(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000)
    if batch > queue:
        raise ConfigError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is more than "
            f"OTEL_BSP_MAX_QUEUE_SIZE={queue}: batches are taken from the queue"
        )


def trace_sampler(environ: Mapping[str, str]) -> tuple[str, float]:
    """OTEL_TRACES_SAMPLER and, for the ratio samplers, OTEL_TRACES_SAMPLER_ARG."""
    name = env_choice(
        environ, "OTEL_TRACES_SAMPLER", "parentbased_always_on", TRACE_SAMPLERS
    )
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not name.endswith("traceidratio") or not raw:
        return name, 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0 <= ratio <= 1:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a ratio from 0 to 1 "
            "(0.1 keeps one trace in ten)"
        )
    return name, ratio


def skipped_instrumentations(environ: Mapping[str, str]) -> frozenset[str]:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS: the parts not to trace."""
    names = {
        name.lower()
        for name in env_list(environ, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS") or []
    }
    if unknown := sorted(names - INSTRUMENTATIONS):
        raise ConfigError(
            f"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names {', '.join(unknown)}: "
            f"use {', '.join(sorted(INSTRUMENTATIONS))} (comma-separated)"
        )
    return frozenset(names)
{%- endif %}


def served_by_development_server() -> bool:
    """Whether the app is being loaded by ``flask run`` (Werkzeug's dev server)."""
    context = click.get_current_context(silent=True)
    return context is not None and context.command is run_command


class Config:
    """Settings shared by every environment."""

    NAME: ClassVar[str] = "base"
    # Whether to make up a per-process SECRET_KEY when none is set. Sessions
    # signed with it end with the process: fine locally, never in production.
    # (Lowercase, so it stays out of app.config: it is not a Flask setting.)
    ephemeral_secret_key: ClassVar[bool] = False
    # The variable that names this environment's Redis.
    redis_variable: ClassVar[str] = "REDIS_URL"

    DEBUG = False
    TESTING = False
    SECRET_KEY: str | None = None
    # Relative SQLite paths live in the instance folder (Flask-SQLAlchemy 3).
    SQLALCHEMY_DATABASE_URI = "sqlite:///app.db"
    # Keep bound parameters (what clients sent) out of error messages and logs.
    # No pool_pre_ping: it waits forever on a frozen server; database.py pings
    # pooled PostgreSQL connections on checkout, within a deadline, instead.
    SQLALCHEMY_ENGINE_OPTIONS: ClassVar[dict[str, Any]] = {
        "hide_parameters": True,
    }
    # Seconds to wait for a PostgreSQL connection, so a health check or request
    # fails fast instead of hanging on an unreachable server.
    DATABASE_CONNECT_TIMEOUT = 5
    # Seconds PostgreSQL lets one statement run (or wait on a lock) before it
    # cancels it, so a request cannot hang on a locked table.
    DATABASE_STATEMENT_TIMEOUT = 30
    # Request bodies above this many bytes are refused with 413, chunked or not.
    MAX_CONTENT_LENGTH = 1024 * 1024
    # A JSON object in a request body may have at most this many members, so
    # that validating (and reporting on) a body stays cheap.
    MAX_JSON_OBJECT_MEMBERS = 100
    # Where Flask-Migrate finds alembic.ini, env.py and versions/.
    MIGRATIONS_DIRECTORY = "migrations"
    # Seconds each readiness or startup check may take before it counts as failed.
    HEALTH_CHECK_TIMEOUT = 2.0
    # Seconds a client is asked to wait (Retry-After) after a 503 that has no
    # better estimate, such as while the database is unavailable.
    RETRY_AFTER_UNAVAILABLE = 5
    # The name pages and documents show.
    SERVICE_NAME = {{ cookiecutter.project_name | python_string }}
    # Logs (observability/logs.py): the lowest level written, and the format,
    # console (readable) or json (one object per line, for log collectors).
    LOG_LEVEL = "INFO"
    LOG_FORMAT = "console"
    # /metrics and the metrics behind it (observability/metrics.py).
    METRICS_ENABLED = True
    # Who may read /metrics: clients from these networks, or with the bearer
    # token METRICS_TOKEN. Everyone, outside production.
    METRICS_ALLOWED_NETWORKS: tuple[Network, ...] = (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )
    METRICS_TOKEN: str | None = None
{%- if cookiecutter.use_opentelemetry == "yes" %}
    # Tracing (observability/tracing.py; README "Tracing"), from the standard
    # OTEL_* variables: off with OTEL_SDK_DISABLED=true; the exporters (none
    # without an OTLP endpoint); the sampler and its ratio; the parts not
    # traced; the request URLs not traced, as regular expressions (None: the
    # health probes and /metrics).
    TRACING_ENABLED = True
    TRACING_EXPORTERS: tuple[str, ...] = ()
    TRACING_SAMPLER = "parentbased_always_on"
    TRACING_SAMPLER_RATIO = 1.0
    TRACING_SKIPPED: frozenset[str] = frozenset()
    TRACING_EXCLUDED_URLS: str | None = None
    # A span exporter that gets every span as it ends, besides those above:
    # the tests' InMemorySpanExporter. Never read from the environment.
    TRACING_EXPORTER: Any = None
{%- endif %}
    # Serve /api/docs and /api/openapi.json.
    API_DOCS_ENABLED = True
    # Host names the app answers to (None: any). Set it behind a proxy that
    # passes arbitrary Host headers through.
    TRUSTED_HOSTS: list[str] | None = None
    # Origins whose browser scripts may call /api/ (CORS_ORIGINS, comma-separated:
    # https://app.example.com, or * for any). None: no cross-origin access.
    CORS_ORIGINS: list[str] | None = None
    # --- Resilience (resilience/; README "Resilience") ---
    # Redis for rate-limit counters, breaker state, idempotency keys and the
    # cache. None: process memory, which is correct for one worker only.
    REDIS_URL: str | None = None
    # Every key this service writes to Redis starts with this, so services (or
    # test runs) that share a Redis never collide.
    REDIS_KEY_PREFIX = __package__ or "app"
    # Seconds to wait for Redis before counting it as down.
    REDIS_TIMEOUT = 0.5
    # The limit of every request whose view has no policy of its own (health
    # probes are exempt), OPTIONS requests and paths no route serves included,
    # per client (a verified caller's user, else the address).
    RATELIMIT_DEFAULT = "600 per minute"
    RATE_LIMITS_ENABLED = True
    # How many proxies in front set X-Forwarded-For and -Proto: 0 trusts none.
    TRUSTED_PROXIES = 0
    # --- Backpressure (resilience/backpressure.py; README "Backpressure") ---
    # Requests one worker process runs at once (default: Gunicorn's threads - 1);
    # more wait for a slot within their queueing budget, then get 503.
    MAX_IN_FLIGHT = 3
    # Slots one client address may hold at once (None: MAX_IN_FLIGHT - 1).
    MAX_IN_FLIGHT_PER_CLIENT: int | None = None
    # Seconds a request may wait for a thread and a slot while the worker keeps
    # up, and while it is overloaded (it had to shed a request: see
    # backpressure.py).
    REQUEST_QUEUE_TIMEOUT = 0.25
    REQUEST_QUEUE_TARGET = 0.01
    # Seconds /health/ready, /startup and /dependencies reuse a computed result.
    HEALTH_RESULT_SECONDS = 1.0
    # Seconds an idempotency key and its stored answer are kept.
    IDEMPOTENCY_TTL = 24 * 60 * 60
    # Named policies for @protected(name): a rate limit (POLICY_LIMIT_<NAME>
    # overrides it), a circuit breaker that answers 503 before the view runs
    # while open ("breaker": name: for views with no fallback of their own),
    # idempotency keys for unsafe methods. The price view has no policy
    # breaker: its client goes through the breaker and falls back to the last
    # known price while it is open (services/pricing.py).
    RESILIENCE_POLICIES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
        {
            "read": {"limit": "300 per minute"},
            "write": {"limit": "60 per minute", "idempotency": True},
            "pricing": {"limit": "120 per minute"},
            # Sign-in and password change: per client and per account.
            # fail_closed: while Redis is away, 503 rather than a count in each
            # worker (which would multiply the limit by the workers).
            "login": {"limit": "5 per minute", "fail_closed": True},
            # Sign-in, per account, from clients it never signed in on (a
            # known device counts under "login" on its own: auth/attempts.py).
            "login-account": {"limit": "100 per hour", "fail_closed": True},
            # Sign-up: per client address; and per mailbox, far higher, so that
            # other clients cannot use up its owner's sign-ups (auth/attempts.py).
            "register": {"limit": "5 per minute; 20 per hour", "fail_closed": True},
            "register-mailbox": {"limit": "100 per hour", "fail_closed": True},
            # The other auth endpoints (refresh, logout, API keys, ...).
            "auth": {"limit": "60 per minute"},
        }
    )
    # Circuit breakers by name; "exclude" lists exceptions (relative to the
    # package) that are not failures, such as an upstream's 4xx answer.
    CIRCUIT_BREAKERS: ClassVar[dict[str, dict[str, Any]]] = {
        "pricing": {
            "fail_max": 5,
            "reset_timeout": 30,
            "exclude": ["services.http.UpstreamClientError"],
        },
    }
    # Flask-Caching: in-process by default, Redis with REDIS_URL.
    CACHE_TYPE = f"{__package__}.resilience.memory_cache.MemoryCache"
    CACHE_DEFAULT_TIMEOUT = 60
    # The example upstream (services/pricing.py); unset: prices are unavailable.
    PRICING_URL: str | None = None
    # Seconds to wait for the pricing service to answer (connecting: 1 s).
    PRICING_TIMEOUT = 2.0

    # --- Auth (auth/; README "Authentication") ---
    # The RS256 signing key, PEM (JWT_PRIVATE_KEY, or a file: JWT_PRIVATE_KEY_FILE).
    # None: development makes one in the instance folder; production refuses.
    JWT_PRIVATE_KEY: str | None = None
    JWT_KEY_SOURCE = "JWT_PRIVATE_KEY"
    # Who issues the tokens and who they are for: checked on every token.
    JWT_ISSUER = "{{ cookiecutter.project_slug }}"
    JWT_AUDIENCE = "{{ cookiecutter.project_slug }}-api"
    # Seconds an access token and a refresh token live.
    JWT_ACCESS_TTL = 15 * 60
    JWT_REFRESH_TTL = 14 * 24 * 60 * 60
    # Seconds of clock difference tolerated between servers.
    JWT_LEEWAY = 10
    PASSWORD_MIN_LENGTH = 12
    # --- API keys (auth/users.py; README "Authentication") ---
    # Days a new key lives when its request names none, and the most a request
    # may name; live (unrevoked, unexpired) keys one user may have; seconds
    # since the sign-in behind a token for it to create a key without the
    # password again.
    API_KEY_TTL_DAYS = 90
    API_KEY_MAX_TTL_DAYS = 365
    API_KEYS_PER_USER = 10
    API_KEY_SIGN_IN_MAX_AGE = 300
{%- if cookiecutter.use_oauth == "yes" %}
    # OpenID Connect providers (auth/oidc.py), by name: OIDC_PROVIDERS lists
    # them; each needs OIDC_<NAME>_CLIENT_ID and OIDC_<NAME>_CLIENT_SECRET, and
    # OIDC_<NAME>_METADATA_URL unless it is a well-known one. Providers without
    # credentials are not offered.
    OIDC_PROVIDERS: Mapping[str, Mapping[str, str]] = MappingProxyType({})
    # Seconds to wait for a provider's metadata, keys and token endpoint.
    OIDC_TIMEOUT = 5.0
    # The origin browsers reach the service at (https://app.example.com): the
    # providers send sign-ins back to it. Without it (development) the
    # request's own host is used, which a client can forge: production with a
    # provider requires it.
    PUBLIC_URL: str | None = None
{%- endif %}
    # argon2id parameters (RFC 9106's second recommendation: 64 MiB, t=3, p=4);
    # raising them rehashes each password at its next login.
    PASSWORD_HASH_TIME_COST = 3
    PASSWORD_HASH_MEMORY_KIB = 64 * 1024
    PASSWORD_HASH_PARALLELISM = 4
{%- if cookiecutter.use_celery == "yes" %}

    # --- Background jobs (tasks/; README "Background jobs") ---
    # The broker: CELERY_BROKER_URL, else REDIS_URL. None: each task runs at
    # once in the process that sends it (eager), which production refuses.
    CELERY_BROKER_URL: str | None = None
    # Seconds a task may run: at the soft limit it is asked to stop, at the hard
    # limit its worker process is replaced.
    CELERY_TASK_SOFT_TIME_LIMIT = 60
    CELERY_TASK_TIME_LIMIT = 90
    # The longest wait, in seconds, between two retries of a failed task.
    CELERY_RETRY_BACKOFF_MAX = 300
    # Seconds after which Redis gives a task its worker never acknowledged (the
    # worker died) to another worker: longer than a task runs or waits to retry.
    CELERY_VISIBILITY_TIMEOUT = 3600
    # Worker processes per `celery worker` (None: one per CPU).
    CELERY_WORKER_CONCURRENCY: int | None = None
    # Where beat keeps its schedule and heartbeat (relative: the instance folder).
    CELERY_BEAT_SCHEDULE_FILE = "celerybeat-schedule"
    # Where `celery worker` writes its heartbeat (relative: the instance folder).
    CELERY_WORKER_HEARTBEAT_FILE = "celery-worker.heartbeat"
    # Seconds between two runs of the cleanup of expired sign-ins (tasks/cleanup.py).
    CLEANUP_INTERVAL = 3600
    # What Celery is given; tasks/__init__.py adds the broker, the result
    # backend and the beat schedule. JSON only: a broker message never unpickles.
    CELERY: ClassVar[dict[str, Any]] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_expires": 24 * 60 * 60,
        # Acknowledge a task when it is done, not when it arrives, and give it
        # back when its worker process dies: a killed worker loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One task at a time per process: none waits behind a slow one.
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        # A request that sends a task waits a few seconds at most for a broker
        # that does not answer (two tries of a second's connect timeout).
        "broker_connection_timeout": 1,
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0.2,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    }
    # `celery worker` serves its metrics on this port when one is set (no
    # authentication: keep it on a private interface). Needs
    # PROMETHEUS_MULTIPROC_DIR, which the worker empties when it starts.
    CELERY_METRICS_PORT: int | None = None
    CELERY_METRICS_HOST = "127.0.0.1"
    # The welcome e-mail's transport (tasks/mail.py): console (the log), file
    # (one .eml per message in MAIL_FILE_DIRECTORY) or smtp.
    MAIL_BACKEND = "console"
    MAIL_FROM = "{{ cookiecutter.project_slug }} <noreply@localhost>"
    # Relative: in the instance folder.
    MAIL_FILE_DIRECTORY = "outbox"
    MAIL_HOST = "localhost"
    MAIL_PORT = 25
    MAIL_USERNAME: str | None = None
    MAIL_PASSWORD: str | None = None
    # none, starttls (upgrade a plain connection, usually port 587) or tls (465).
    MAIL_SECURITY = "none"
    MAIL_TIMEOUT = 10.0
    # The console backend writes recipients and bodies (sign-in links, one
    # day) into the logs: production refuses it unless this says it may.
    MAIL_CONSOLE_IN_PRODUCTION = False
{%- endif %}

    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False
    PREFERRED_URL_SCHEME = "http"
    # Sent with every response unless a view sets the header itself. The docs
    # page loads only same-origin files and has no inline script or style.
    SECURITY_HEADERS: ClassVar[dict[str, str]] = {
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # Not no-referrer: Flask-WTF checks, over HTTPS, that a form was posted
        # from this site by its Referer; other sites get none.
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.SECRET_KEY = environ.get("SECRET_KEY") or None
        if not self.SECRET_KEY and self.ephemeral_secret_key:
            self.SECRET_KEY = secrets.token_urlsafe(48)
        self.DATABASE_CONNECT_TIMEOUT = env_int(
            environ,
            "DATABASE_CONNECT_TIMEOUT",
            self.DATABASE_CONNECT_TIMEOUT,
            maximum=MAX_CONNECT_TIMEOUT,
        )
        self.DATABASE_STATEMENT_TIMEOUT = env_int(
            environ,
            "DATABASE_STATEMENT_TIMEOUT",
            self.DATABASE_STATEMENT_TIMEOUT,
            maximum=MAX_STATEMENT_TIMEOUT,
        )
        variable, url = self.database_url(environ)
        if url:
            self.SQLALCHEMY_DATABASE_URI = database_uri(
                variable,
                url,
                {
                    "connect": self.DATABASE_CONNECT_TIMEOUT,
                    "statement": self.DATABASE_STATEMENT_TIMEOUT,
                },
            )
        self.MAX_CONTENT_LENGTH = env_int(
            environ, "MAX_CONTENT_LENGTH", self.MAX_CONTENT_LENGTH, maximum=2**30
        )
        self.MIGRATIONS_DIRECTORY = environ.get(
            "MIGRATIONS_DIRECTORY", self.MIGRATIONS_DIRECTORY
        )
        self.HEALTH_CHECK_TIMEOUT = env_seconds(
            environ, "HEALTH_CHECK_TIMEOUT", self.HEALTH_CHECK_TIMEOUT, maximum=60
        )
        self.API_DOCS_ENABLED = env_bool(
            environ, "API_DOCS_ENABLED", default=self.API_DOCS_ENABLED
        )
        self.TRUSTED_HOSTS = env_list(environ, "TRUSTED_HOSTS")
        self.CORS_ORIGINS = cors_origins(environ)
        self.observability_settings(environ)
        self.resilience_settings(environ)
        self.auth_settings(environ)
{%- if cookiecutter.use_celery == "yes" %}
        self.job_settings(environ)
{%- endif %}

    def observability_settings(self, environ: Mapping[str, str]) -> None:
        """LOG_LEVEL, LOG_FORMAT, and who may read /metrics."""
        self.LOG_LEVEL = env_choice(
            environ, "LOG_LEVEL", self.LOG_LEVEL.lower(), LOG_LEVELS
        ).upper()
        self.LOG_FORMAT = env_choice(
            environ, "LOG_FORMAT", self.LOG_FORMAT, LOG_FORMATS
        )
        self.METRICS_ENABLED = env_bool(
            environ, "METRICS_ENABLED", default=self.METRICS_ENABLED
        )
        self.METRICS_ALLOWED_NETWORKS = networks(
            environ, "METRICS_ALLOWED_NETWORKS", self.METRICS_ALLOWED_NETWORKS
        )
        self.METRICS_TOKEN = environ.get("METRICS_TOKEN", "").strip() or None
{%- if cookiecutter.use_opentelemetry == "yes" %}
        self.tracing_settings(environ)

    def tracing_settings(self, environ: Mapping[str, str]) -> None:
        """The standard OTEL_* variables, checked here so that a typo stops the
        start-up (Gunicorn's included) instead of being a warning in a log."""
        self.TRACING_ENABLED = not env_bool(environ, "OTEL_SDK_DISABLED", default=False)
        self.TRACING_EXPORTERS = trace_exporters(environ)
        self.TRACING_SAMPLER, self.TRACING_SAMPLER_RATIO = trace_sampler(environ)
        self.TRACING_SKIPPED = skipped_instrumentations(environ)
        # Set and empty: every request is traced.
        for variable in EXCLUDED_URLS:
            if variable in environ:
                self.TRACING_EXCLUDED_URLS = environ[variable]
                break
{%- endif %}

    def auth_settings(self, environ: Mapping[str, str]) -> None:
        """The token signing key and lifetimes, and the password policy."""
        self.JWT_PRIVATE_KEY, self.JWT_KEY_SOURCE = signing_key(environ)
        self.JWT_ISSUER = environ.get("JWT_ISSUER") or self.JWT_ISSUER
        self.JWT_AUDIENCE = environ.get("JWT_AUDIENCE") or self.JWT_AUDIENCE
        self.JWT_ACCESS_TTL = env_int(
            environ,
            "JWT_ACCESS_TTL",
            self.JWT_ACCESS_TTL,
            minimum=30,
            maximum=24 * 3600,
        )
        self.JWT_REFRESH_TTL = env_int(
            environ,
            "JWT_REFRESH_TTL",
            self.JWT_REFRESH_TTL,
            minimum=60,
            maximum=365 * 24 * 3600,
        )
        self.PASSWORD_MIN_LENGTH = env_int(
            environ,
            "PASSWORD_MIN_LENGTH",
            self.PASSWORD_MIN_LENGTH,
            minimum=8,
            maximum=128,
        )
        self.api_key_settings(environ)
{%- if cookiecutter.use_oauth == "yes" %}
        self.OIDC_PROVIDERS = oidc_providers(environ)
        self.OIDC_TIMEOUT = env_seconds(
            environ, "OIDC_TIMEOUT", self.OIDC_TIMEOUT, maximum=60
        )
        self.PUBLIC_URL = public_url(environ)
{%- endif %}

    def api_key_settings(self, environ: Mapping[str, str]) -> None:
        """API_KEY_TTL_DAYS (within API_KEY_MAX_TTL_DAYS), API_KEYS_PER_USER and
        API_KEY_SIGN_IN_MAX_AGE."""
        self.API_KEY_MAX_TTL_DAYS = env_int(
            environ,
            "API_KEY_MAX_TTL_DAYS",
            self.API_KEY_MAX_TTL_DAYS,
            maximum=MAX_API_KEY_DAYS,
        )
        self.API_KEY_TTL_DAYS = env_int(
            environ,
            "API_KEY_TTL_DAYS",
            min(self.API_KEY_TTL_DAYS, self.API_KEY_MAX_TTL_DAYS),
            maximum=self.API_KEY_MAX_TTL_DAYS,
        )
        self.API_KEYS_PER_USER = env_int(
            environ, "API_KEYS_PER_USER", self.API_KEYS_PER_USER, maximum=1000
        )
        self.API_KEY_SIGN_IN_MAX_AGE = env_int(
            environ,
            "API_KEY_SIGN_IN_MAX_AGE",
            self.API_KEY_SIGN_IN_MAX_AGE,
            minimum=0,
            maximum=24 * 3600,
        )

    def resilience_settings(self, environ: Mapping[str, str]) -> None:
        """REDIS_URL switches every shared state store to Redis at once."""
        self.REDIS_URL = redis_url(environ, self.redis_variable)
        self.REDIS_KEY_PREFIX = environ.get("REDIS_KEY_PREFIX") or self.REDIS_KEY_PREFIX
        self.REDIS_TIMEOUT = env_seconds(
            environ, "REDIS_TIMEOUT", self.REDIS_TIMEOUT, maximum=30
        )
        # (The test suite's NullCache stays: cache tests choose their cache.)
        if self.REDIS_URL and self.CACHE_TYPE != "NullCache":
            self.CACHE_TYPE = f"{__package__}.resilience.redis_cache.SafeRedisCache"
        self.RATELIMIT_DEFAULT = env_rate_limit(
            environ, "RATELIMIT_DEFAULT", self.RATELIMIT_DEFAULT
        )
        self.RESILIENCE_POLICIES = {
            name: {
                **policy,
                "limit": env_rate_limit(
                    environ,
                    f"POLICY_LIMIT_{name.upper().replace('-', '_')}",
                    policy.get("limit", ""),
                ),
            }
            for name, policy in self.RESILIENCE_POLICIES.items()
        }
        self.TRUSTED_PROXIES = env_int(
            environ, "TRUSTED_PROXIES", self.TRUSTED_PROXIES, minimum=0, maximum=10
        )
        self.backpressure_settings(environ)
        self.IDEMPOTENCY_TTL = env_int(
            environ, "IDEMPOTENCY_TTL", self.IDEMPOTENCY_TTL, maximum=30 * 24 * 3600
        )
        self.PRICING_URL = http_url(environ, "PRICING_URL")
        self.PRICING_TIMEOUT = env_seconds(
            environ, "PRICING_TIMEOUT", self.PRICING_TIMEOUT, maximum=60
        )

    def backpressure_settings(self, environ: Mapping[str, str]) -> None:
        """MAX_IN_FLIGHT (and per client) and the two queueing budgets."""
        # By default one thread of each Gunicorn worker stays free for probes.
        threads = env_int(environ, "GUNICORN_THREADS", 4, maximum=64)
        self.MAX_IN_FLIGHT = env_int(
            environ, "MAX_IN_FLIGHT", max(1, threads - 1), maximum=10_000
        )
        if environ.get("MAX_IN_FLIGHT_PER_CLIENT", "").strip():
            self.MAX_IN_FLIGHT_PER_CLIENT = env_int(
                environ, "MAX_IN_FLIGHT_PER_CLIENT", 1, maximum=self.MAX_IN_FLIGHT
            )
        self.REQUEST_QUEUE_TIMEOUT = env_seconds(
            environ, "REQUEST_QUEUE_TIMEOUT", self.REQUEST_QUEUE_TIMEOUT, maximum=60
        )
        self.REQUEST_QUEUE_TARGET = env_seconds(
            environ,
            "REQUEST_QUEUE_TARGET",
            self.REQUEST_QUEUE_TARGET,
            maximum=self.REQUEST_QUEUE_TIMEOUT,
        )

{%- if cookiecutter.use_celery == "yes" %}

    def job_settings(self, environ: Mapping[str, str]) -> None:
        """The broker (REDIS_URL unless CELERY_BROKER_URL says otherwise), task
        limits, the cleanup schedule and the mail transport."""
        self.CELERY_BROKER_URL = self.broker_url(environ) or self.REDIS_URL
        day = 24 * 3600
        for name, maximum in (
            ("CELERY_TASK_SOFT_TIME_LIMIT", day),
            ("CELERY_TASK_TIME_LIMIT", day),
            ("CELERY_RETRY_BACKOFF_MAX", day),
            ("CELERY_VISIBILITY_TIMEOUT", 7 * day),
        ):
            setattr(
                self, name, env_int(environ, name, getattr(self, name), maximum=maximum)
            )
        if self.CELERY_TASK_SOFT_TIME_LIMIT >= self.CELERY_TASK_TIME_LIMIT:
            raise ConfigError(
                "CELERY_TASK_SOFT_TIME_LIMIT must be below CELERY_TASK_TIME_LIMIT, "
                "so a task is asked to stop before it is killed"
            )
        longest = max(self.CELERY_TASK_TIME_LIMIT, self.CELERY_RETRY_BACKOFF_MAX)
        if longest >= self.CELERY_VISIBILITY_TIMEOUT:
            raise ConfigError(
                "CELERY_VISIBILITY_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT and "
                "CELERY_RETRY_BACKOFF_MAX: Redis would hand a running or waiting "
                "task to a second worker"
            )
        if "CELERY_WORKER_CONCURRENCY" in environ:
            self.CELERY_WORKER_CONCURRENCY = env_int(
                environ, "CELERY_WORKER_CONCURRENCY", 1, maximum=256
            )
        self.worker_metrics_settings(environ)
        self.CELERY_BEAT_SCHEDULE_FILE = (
            environ.get("CELERY_BEAT_SCHEDULE_FILE") or self.CELERY_BEAT_SCHEDULE_FILE
        )
        self.CELERY_WORKER_HEARTBEAT_FILE = (
            environ.get("CELERY_WORKER_HEARTBEAT_FILE")
            or self.CELERY_WORKER_HEARTBEAT_FILE
        )
        self.CLEANUP_INTERVAL = env_int(
            environ,
            "CLEANUP_INTERVAL",
            self.CLEANUP_INTERVAL,
            minimum=10,
            maximum=7 * 24 * 3600,
        )
        self.MAIL_BACKEND = env_choice(
            environ, "MAIL_BACKEND", self.MAIL_BACKEND, MAIL_BACKENDS
        )
        self.MAIL_FROM = environ.get("MAIL_FROM") or self.MAIL_FROM
        self.MAIL_FILE_DIRECTORY = (
            environ.get("MAIL_FILE_DIRECTORY") or self.MAIL_FILE_DIRECTORY
        )
        self.MAIL_HOST = environ.get("MAIL_HOST") or self.MAIL_HOST
        self.MAIL_PORT = env_int(environ, "MAIL_PORT", self.MAIL_PORT, maximum=65535)
        self.MAIL_USERNAME = environ.get("MAIL_USERNAME") or None
        self.MAIL_PASSWORD = environ.get("MAIL_PASSWORD") or None
        self.MAIL_SECURITY = env_choice(
            environ, "MAIL_SECURITY", self.MAIL_SECURITY, MAIL_SECURITY
        )
        self.MAIL_TIMEOUT = env_seconds(
            environ, "MAIL_TIMEOUT", self.MAIL_TIMEOUT, maximum=300
        )
        self.MAIL_CONSOLE_IN_PRODUCTION = env_bool(
            environ, "MAIL_CONSOLE_IN_PRODUCTION", default=False
        )

    def worker_metrics_settings(self, environ: Mapping[str, str]) -> None:
        """CELERY_METRICS_PORT and _HOST; the port needs PROMETHEUS_MULTIPROC_DIR."""
        if environ.get("CELERY_METRICS_PORT", "").strip():
            self.CELERY_METRICS_PORT = env_int(
                environ, "CELERY_METRICS_PORT", 0, maximum=65535
            )
            if not environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip():
                raise ConfigError(
                    "CELERY_METRICS_PORT is set without PROMETHEUS_MULTIPROC_DIR: "
                    "the worker's processes write their metrics there; give the "
                    "worker a directory of its own (it is emptied at every start)"
                )
        host = environ.get("CELERY_METRICS_HOST", "").strip()
        if host:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(
                    f"CELERY_METRICS_HOST={host!r} is not an IP address: use "
                    "127.0.0.1 (the default), or 0.0.0.0 in a container"
                ) from None
            self.CELERY_METRICS_HOST = host

    @staticmethod
    def broker_url(environ: Mapping[str, str]) -> str | None:
        """This environment's own broker setting (None: use REDIS_URL)."""
        return broker_url(environ, "CELERY_BROKER_URL")
{%- endif %}

    @staticmethod
    def database_url(environ: Mapping[str, str]) -> tuple[str, str | None]:
        """The variable naming this environment's database, and its value."""
        return "DATABASE_URL", environ.get("DATABASE_URL")

    def settings(self) -> dict[str, Any]:
        """The Flask settings this object holds, as ``app.config`` would get them."""
        return {name: getattr(self, name) for name in dir(self) if name.isupper()}

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        """Refuse settings that are unsafe for this environment."""


class DevelopmentConfig(Config):
    """Local development: debug on, SQLite in the instance folder by default."""

    NAME = "development"
    DEBUG = True
    ephemeral_secret_key = True


class TestingConfig(Config):
    """The test suite: in-memory SQLite unless TEST_DATABASE_URL names another.

    Rate limits are off and the cache keeps nothing, so tests do not depend on
    each other; the tests of those features turn them on.
    """

    NAME = "testing"
    TESTING = True
    ephemeral_secret_key = True
    SQLALCHEMY_DATABASE_URI = "sqlite://"
    RATE_LIMITS_ENABLED = False
    CACHE_TYPE = "NullCache"
    # Every probe runs its checks: tests change what the checks see between
    # probes; the tests of the probes' caching set it.
    HEALTH_RESULT_SECONDS = 0.0
    CACHE_NO_NULL_WARNING = True
    # Never REDIS_URL: tests write to (and clear) the Redis they are given.
    redis_variable = "TEST_REDIS_URL"
    # Cheap hashes: the suite creates hundreds of accounts.
    PASSWORD_HASH_TIME_COST = 1
    PASSWORD_HASH_MEMORY_KIB = 1024
    PASSWORD_HASH_PARALLELISM = 1

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ)
        # Each test app gets keys of its own in a shared TEST_REDIS_URL.
        self.REDIS_KEY_PREFIX = f"{self.REDIS_KEY_PREFIX}-test-{secrets.token_hex(6)}"
{%- if cookiecutter.use_opentelemetry == "yes" %}

    def tracing_settings(self, environ: Mapping[str, str]) -> None:
        super().tracing_settings(environ)
        # Never an exporter of OTEL_*: a test run must not send spans to a
        # collector by accident. Tests give their own (TRACING_EXPORTER).
        self.TRACING_EXPORTERS = ()
{%- endif %}

{%- if cookiecutter.use_celery == "yes" %}

    def job_settings(self, environ: Mapping[str, str]) -> None:
        super().job_settings(environ)
        # Tasks run eagerly unless a test names a broker (TEST_CELERY_BROKER_URL
        # or an override): TEST_REDIS_URL alone does not send them to Redis.
        self.CELERY_BROKER_URL = self.broker_url(environ)

    @staticmethod
    def broker_url(environ: Mapping[str, str]) -> str | None:
        # Never CELERY_BROKER_URL: tests must not feed a real worker by accident.
        return broker_url(environ, "TEST_CELERY_BROKER_URL")
{%- endif %}

    @staticmethod
    def database_url(environ: Mapping[str, str]) -> tuple[str, str | None]:
        # Never DATABASE_URL: a test run must not touch a real database by accident.
        return "TEST_DATABASE_URL", environ.get("TEST_DATABASE_URL")


class ProductionConfig(Config):
    """Production: safe defaults, and a refusal to start with unsafe settings."""

    NAME = "production"
    LOG_FORMAT = "json"
    # No network by default: behind a proxy on the same host, every request
    # would come from 127.0.0.1. Set METRICS_ALLOWED_NETWORKS or METRICS_TOKEN.
    METRICS_ALLOWED_NETWORKS: tuple[Network, ...] = ()
    SESSION_COOKIE_SECURE = True
    PREFERRED_URL_SCHEME = "https"
    SECURITY_HEADERS: ClassVar[dict[str, str]] = {
        **Config.SECURITY_HEADERS,
        "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    }

    @staticmethod
    def database_url(environ: Mapping[str, str]) -> tuple[str, str | None]:
        url = environ.get("DATABASE_URL")
        if not url:
            raise ConfigError(
                "DATABASE_URL is not set: production needs an explicit database "
                "(for example postgresql://user:password@host:5432/name)"
            )
        return "DATABASE_URL", url

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        problem = weakness(config.get("SECRET_KEY"))
        if problem:
            raise ConfigError(
                f"SECRET_KEY {problem}: production needs a random key, such as "
                f"{RANDOM_KEY_COMMAND} prints"
            )
        if config.get("DEBUG") or get_debug_flag():
            raise ConfigError(
                "DEBUG is on (DEBUG or FLASK_DEBUG): the debugger must never run in "
                "production"
            )
        if config.get("TESTING"):
            raise ConfigError("TESTING is on: production must not run in testing mode")
        token = config.get("METRICS_TOKEN")
        if token and len(token) < MIN_METRICS_TOKEN_LENGTH:
            raise ConfigError(
                f"METRICS_TOKEN is shorter than {MIN_METRICS_TOKEN_LENGTH} characters: "
                f"use a random one, such as {RANDOM_KEY_COMMAND} prints"
            )
        if not config.get("JWT_PRIVATE_KEY"):
            raise ConfigError(
                "JWT_PRIVATE_KEY is not set (nor JWT_PRIVATE_KEY_FILE): production "
                f"signs tokens with its own RSA key; make one with `{RSA_KEY_COMMAND}`"
            )
{%- if cookiecutter.use_oauth == "yes" %}
        public = config.get("PUBLIC_URL")
        if config.get("OIDC_PROVIDERS") and not public:
            raise ConfigError(
                "PUBLIC_URL is not set: OpenID Connect sends sign-ins back to it "
                "(https://your.host), never to the Host a request names"
            )
        if public and not public.startswith("https://"):
            raise ConfigError(f"PUBLIC_URL={public!r} must be https:// in production")
{%- endif %}
{%- if cookiecutter.use_celery == "yes" %}
        if not config.get("CELERY_BROKER_URL"):
            raise ConfigError(
                "No broker: set REDIS_URL (or CELERY_BROKER_URL, for instance "
                "amqp://user:password@host:5672/ for RabbitMQ). Production never "
                "runs tasks inside web requests"
            )
        if config.get("MAIL_BACKEND") == "console" and not config.get(
            "MAIL_CONSOLE_IN_PRODUCTION"
        ):
            raise ConfigError(
                "MAIL_BACKEND=console writes every recipient and message into the "
                "logs: set MAIL_BACKEND=smtp (with MAIL_HOST) or file, or "
                "MAIL_CONSOLE_IN_PRODUCTION=true to accept that"
            )
        if config.get("MAIL_USERNAME") and config.get("MAIL_SECURITY") == "none":
            raise ConfigError(
                "MAIL_USERNAME is set with MAIL_SECURITY=none: the SMTP login "
                "would cross the network in clear text; use starttls or tls"
            )
{%- endif %}
        if served_by_development_server():
            raise ConfigError(
                "`flask run` is the development server and never serves production: "
                f"run `{SERVER_COMMAND}` (or set APP_ENV=development)"
            )


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


def server_config_name(environ: Mapping[str, str] | None = None) -> str:
    """The configuration a production server runs: $APP_ENV, else production."""
    env = os.environ if environ is None else environ
    return env.get(ENVIRONMENT_VARIABLE) or SERVER_CONFIG


def check_server_config(environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate what a server would run, without building an app.

    gunicorn.conf.py calls this in the master process, so a refusal is one line
    before any worker starts, instead of a traceback in every worker.
    """
    config = load_config(server_config_name(environ), environ)
    config.validate(config.settings())
    return config
