"""Structured logs: one line per event, JSON in production, readable in development.

Every logger of the process, the app's own (structlog or ``logging``), Flask's,
Gunicorn's and Celery's, goes through one handler on the root logger whose
formatter runs the same processors: the request (or task) context, the level,
the logger's name, a UTC timestamp, then redaction. Redaction works twice:
fields whose name says they hold a credential (password, token, api_key,
authorization, cookie, secret, ...) are replaced, and the values of this
app's own secrets (SECRET_KEY, the JWT key, passwords inside URLs, ...) are
cut out of the finished line, wherever a message put them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import structlog
from gunicorn import glogging
from structlog.typing import EventDict, Processor, WrappedLogger

from ..config import CONFIGS, LOG_FORMATS, ProductionConfig, server_config_name
from ..errors import shortened

REDACTED = "[redacted]"
# Field names that hold a credential, wherever they appear in a line.
SECRET_FIELD = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|authori[sz]ation|cookie"
    r"|session|credential|private[_-]?key|signature",
    re.IGNORECASE,
)
# A query string inside a message (Gunicorn quotes the request lines it refuses).
QUERY_STRING = re.compile(r"\?[^\s'\"]+")
# Gunicorn's refusals ("Invalid request from ip=...: <error>: <data>") quote
# what they could not parse. The request line, method and version are kept
# (the query string removed, the rest cut as paths are); a header, a chunk or
# a PROXY line may carry a credential or a cookie, and is left out.
REFUSAL = "Invalid request from ip="
# A request Gunicorn's worker failed on, outside the app: "<this> GET /path".
FAILED_REQUEST = "Error handling request "
QUOTES_KEPT = (
    "Invalid HTTP request line",
    "Invalid HTTP method",
    "Invalid HTTP Version",
)
# Credentials, wherever they appear (a client may put one in a path): a JWT
# (header.payload.signature, the header starting as base64url of '{"') and
# this service's API keys (ak_<prefix>_<secret>, auth/users.py).
CREDENTIAL = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]+|ak_[0-9a-f]{12}_[\w-]+")
# A secret shorter than this is not searched for in lines (it would match
# ordinary text); the settings that hold secrets refuse such values anyway.
SHORTEST_SECRET = 8

# Processors added by other parts (tracing adds the trace and span ids).
_extra_processors: list[Processor] = []
# The current app's secret values, cut out of every line.
_secrets: tuple[str, ...] = ()


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (a test may have replaced it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """StreamHandler assigns its stream; the current sys.stderr is used."""


def add_processor(processor: Processor) -> None:
    """Run `processor` on every line from now on (once, however often called)."""
    if processor not in _extra_processors:
        _extra_processors.append(processor)


def run_extra_processors(
    logger: WrappedLogger, method: str, event_dict: EventDict
) -> EventDict:
    for processor in _extra_processors:
        event_dict = processor(logger, method, event_dict)  # type: ignore[assignment]
    return event_dict


def redact(value: Any) -> Any:
    """`value` with every credential-named field, at any depth, replaced."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if SECRET_FIELD.search(str(key)) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def redact_fields(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    for key, value in event_dict.items():
        if key.startswith("_"):
            continue  # structlog's own bookkeeping (the stdlib record)
        if SECRET_FIELD.search(key):
            event_dict[key] = REDACTED
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = redact(value)
    return event_dict


def add_process_id(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """The process: which of several Gunicorn or Celery workers wrote the line."""
    event_dict["pid"] = os.getpid()
    return event_dict


def without_refused_data(message: str) -> str:
    """A Gunicorn error line without the query string or header it quotes, and
    with the request line or path it quotes cut (errors.shortened)."""
    if message.startswith(REFUSAL):
        source, _, error = message.partition(": ")
        kind, quoted, data = error.partition(": ")
        if quoted and not kind.startswith(QUOTES_KEPT):
            return f"{source}: {kind}: [removed]"
        if quoted:
            data = QUERY_STRING.sub("?[query removed]", data)
            return f"{source}: {kind}: {shortened(data)}"
    message = QUERY_STRING.sub("?[query removed]", message)
    if message.startswith(FAILED_REQUEST):
        return FAILED_REQUEST + shortened(message.removeprefix(FAILED_REQUEST))
    return message


def gunicorn_access_fields(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """Gunicorn's access lines as fields; the query string is left out.

    The arguments of every other stdlib record are dropped: its message has
    them already.
    """
    atoms = event_dict.pop("positional_args", None)
    record = event_dict.get("_record")
    if record is not None and record.name == "gunicorn.error":
        event_dict["event"] = without_refused_data(event_dict["event"])
    if record is None or record.name != "gunicorn.access":
        return event_dict
    if not isinstance(atoms, Mapping):
        return event_dict
    event_dict.update(
        event="access",
        remote=atoms["h"],
        method=atoms["m"],
        path=shortened(atoms["U"]),
        status=atoms["s"],
        bytes=atoms["B"],
        duration_ms=round(int(atoms["D"]) / 1000, 3),
        request_id=atoms["{x-request-id}o"],
    )
    return event_dict


class Scrubbed:
    """A renderer whose output has the app's secret values cut out."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(
        self, logger: WrappedLogger, method: str, event_dict: EventDict
    ) -> str:
        line = str(self.renderer(logger, method, event_dict))
        if "eyJ" in line or "ak_" in line:
            line = CREDENTIAL.sub(REDACTED, line)
        for secret in _secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line


SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    add_process_id,
    gunicorn_access_fields,
    run_extra_processors,
    redact_fields,
]


def formatter(log_format: str) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of every line: `log_format` is json or console."""
    renderer: Processor
    if log_format == "json":
        tail: list[Processor] = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        tail = [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    *steps, renderer = tail
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS,
        # For Gunicorn's access records, whose argument is a dict of fields.
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *steps,
            Scrubbed(renderer),
        ],
    )


def remember_secrets(values: Iterable[str | None]) -> None:
    """Cut these values out of every line from now on (replacing earlier ones)."""
    global _secrets  # noqa: PLW0603 - logging is configured once per process
    kept = {value for value in values if value and len(value) >= SHORTEST_SECRET}
    # As they appear in a line too: escaped in JSON, percent-decoded from a URL.
    kept |= {json.dumps(value)[1:-1] for value in kept}
    kept |= {unquote(value) for value in kept}
    _secrets = tuple(
        sorted(kept, key=len, reverse=True)  # longest first: one may hold another
    )


class NoDevServerRequests(logging.Filter):
    """Drops the development server's request lines, keeping its other lines.

    They repeat the app's own request line, and would print query strings.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return '"%s" %s %s' not in str(record.msg)


def configure_logging(level: str, log_format: str) -> None:
    """Send every logger through one handler on the root logger.

    Idempotent: the handler is installed once and then updated, and handlers
    that others added to the root logger (a test runner's) are left alone.
    """
    structlog.configure(
        processors=[
            # A line below the level is dropped before anything is done for it.
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    handler = next(
        (found for found in root.handlers if isinstance(found, StderrHandler)), None
    )
    if handler is None:
        handler = StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(formatter(log_format))
    root.setLevel(level)
    werkzeug = logging.getLogger("werkzeug")
    if not any(isinstance(found, NoDevServerRequests) for found in werkzeug.filters):
        werkzeug.addFilter(NoDevServerRequests())


def secrets_of(config: Mapping[str, Any]) -> list[str]:
    """The secret values in an app's settings, to cut out of every line."""
    found = [
        config.get(name)
        for name in ("SECRET_KEY", "MAIL_PASSWORD", "METRICS_TOKEN")
        if isinstance(config.get(name), str)
    ]
    # A PEM key: each line of its body (a message may quote one line).
    pem = config.get("JWT_PRIVATE_KEY") or ""
    found += [line for line in pem.splitlines() if line and "-----" not in line]
    for provider in (config.get("OIDC_PROVIDERS") or {}).values():
        found.append(provider.get("client_secret"))
    for name in ("SQLALCHEMY_DATABASE_URI", "REDIS_URL", "CELERY_BROKER_URL"):
        url = config.get(name)
        if isinstance(url, str):
            with contextlib.suppress(ValueError):
                found.append(urlsplit(url).password)
    return [value for value in found if isinstance(value, str)]


class GunicornLogger(glogging.Logger):
    """Gunicorn's error log (and access log, when enabled) in the app's format.

    ``logger_class`` in gunicorn.conf.py, which sets the level from LOG_LEVEL;
    the format is the app's: LOG_FORMAT, else the server's configuration's
    (APP_ENV, production by default: json). A bad LOG_FORMAT is refused by
    on_starting, in one line written with that default. The access log is off
    by default: the app writes one line per request, with its id, route,
    status, duration and user.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        server_config = CONFIGS.get(server_config_name(), ProductionConfig)
        chosen = os.environ.get("LOG_FORMAT", "").lower()
        log_format = chosen if chosen in LOG_FORMATS else server_config.LOG_FORMAT
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter(log_format))


def get_logger(name: str) -> Any:
    """A structlog logger: ``log.info("event", key=value)``."""
    return structlog.stdlib.get_logger(name)
