"""Tracing with OpenTelemetry: a span for each request, query, Redis command,
outbound HTTP call and background task, one trace from the request to its task.

Configured by the standard OTEL_* variables (README "Tracing"): config.py
checks them and reads where spans go; the SDK reads the rest itself
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_BSP_*, ...). Without an OTLP endpoint spans are made but sent nowhere:
their ids are still in the log lines, and ``traceparent`` still goes out with
every call, so a collector added later sees whole traces at once.

- Every trace starts at an entry point: a request, a task, a message sent
  outside a request. A query, Redis command or HTTP call made outside of all
  of them (a probe's ``SELECT 1``, the Celery worker polling its broker)
  starts none; the health probes and /metrics are not traced.
- One tracer provider per process, made when the first app is; urllib3,
  Redis and Celery are instrumented once per process, each app's Flask and
  database engines when the app is created.
  The latest app's exporters and sampler are the process's: a server runs
  one app, the tests build many.
- Nothing runs at import (gunicorn.conf.py imports the package in Gunicorn's
  master), and no exporter is made before a process ends its first span: a
  process that forks (Celery's prefork pool, Gunicorn with preload_app)
  shares neither its export thread nor its collector connections with its
  children, each child makes its own.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, request
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy import engine as sqlalchemy_tracing
from opentelemetry.instrumentation.sqlalchemy.version import (
    __version__ as sqlalchemy_tracing_version,
)
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    SpanKind,
    Status,
    StatusCode,
    format_span_id,
    format_trace_id,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from structlog.typing import EventDict, WrappedLogger
from werkzeug.exceptions import SecurityError
from werkzeug.wsgi import get_host

from ..extensions import DISTRIBUTION, db
from . import logs
from .requests import QUIET_PATHS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# Requests that are not traced unless OTEL_PYTHON_FLASK_EXCLUDED_URLS says
# otherwise: the probes and scrapes, which come every few seconds (the
# requests whose log lines are DEBUG). The instrumentation matches these
# against the whole URL.
QUIET_URLS = ",".join(
    rf"^https?://[^/?#]+{re.escape(path)}(\?|$)" for path in sorted(QUIET_PATHS)
)
# Set on a request whose Host TRUSTED_HOSTS refuses: it is not traced.
UNTRACED = f"{__name__}.untraced"
# The name SQLAlchemy's instrumentor gives its tracer and meter.
SQLALCHEMY_SCOPE = "opentelemetry.instrumentation.sqlalchemy"


def add_trace_ids(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """A line written inside a span names its trace and span, in hex."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format_trace_id(context.trace_id))
        event_dict.setdefault("span_id", format_span_id(context.span_id))
    return event_dict


def sampler_named(name: str, ratio: float) -> Sampler:
    """The SDK's sampler of OTEL_TRACES_SAMPLER (config.py checked the name)."""
    root = name.removeprefix("parentbased_")
    chosen: Sampler = (
        ALWAYS_ON
        if root == "always_on"
        else ALWAYS_OFF
        if root == "always_off"
        else TraceIdRatioBased(ratio)
    )
    return ParentBased(chosen) if name.startswith("parentbased_") else chosen


class EntryPointsOnly(Sampler):
    """`sampler`'s decision, except that a client span (a query, a Redis
    command, an HTTP call) without a parent starts no trace."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def should_sample(  # noqa: PLR0913, PLR0917 - the SDK's signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self.sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"EntryPointsOnly({self.sampler.get_description()})"


def exporter_named(name: str) -> SpanExporter:
    """otlp (HTTP/protobuf, configured by OTEL_EXPORTER_OTLP_*) or console."""
    if name == "console":
        # The stdout of now, not of when the SDK was imported.
        return ConsoleSpanExporter(out=sys.stdout)
    # Imported when chosen: protobuf takes a good part of a second to load,
    # in every process that imports the package (Gunicorn's master, flask).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()


class ProcessExport(SpanProcessor):
    """Hands ended spans to this process's exporters, made on first use.

    Configured exporters get batches, sent by a thread of the SDK; the given
    one (the tests') gets each span as it ends. A forked child starts afresh:
    the parent's thread is not running there and its connections are not the
    child's to use.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: tuple[str, ...] = ()
        self._given: SpanProcessor | None = None
        self._batches: list[SpanProcessor] = []
        self._made_in: int | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def configure(self, names: tuple[str, ...], given: SpanExporter | None) -> None:
        """Export to `names` (and at once to `given`) from now on."""
        with self._lock:
            stale = self._batches if self._made_in == os.getpid() else []
            self._names = names
            self._given = None if given is None else SimpleSpanProcessor(given)
            self._forget()
        for processor in stale:
            processor.shutdown()  # sends what it still holds

    def _forget(self) -> None:
        self._batches = []
        self._made_in = None

    def _after_fork(self) -> None:
        # Another thread of the parent may have held the lock at the fork.
        self._lock = threading.Lock()
        self._forget()

    def _processors(self, *, make: bool) -> list[SpanProcessor]:
        pid = os.getpid()
        if make and self._made_in != pid:
            with self._lock:
                if self._made_in != pid:
                    self._batches = [
                        BatchSpanProcessor(exporter_named(name)) for name in self._names
                    ]
                    self._made_in = pid
        batches = self._batches if self._made_in == pid else []
        return [*batches, *([self._given] if self._given else [])]

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._processors(make=False):
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._processors(make=True):
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self._processors(make=False):
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(
            processor.force_flush(timeout_millis)
            for processor in self._processors(make=False)
        )


class ProcessTracing:
    """The process's tracer provider, sampler and export, made once."""

    def __init__(self) -> None:
        self.sampler = EntryPointsOnly(ParentBased(ALWAYS_ON))
        self.export = ProcessExport()
        self.provider = TracerProvider(sampler=self.sampler, resource=resource())
        self.provider.add_span_processor(self.export)
        trace.set_tracer_provider(self.provider)


def resource() -> Resource:
    """This service: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, else the
    distribution's name and version."""
    defaults = {
        SERVICE_NAME: DISTRIBUTION["Name"],
        SERVICE_VERSION: DISTRIBUTION["Version"],
    }
    given = OTELResourceDetector().detect().attributes
    return Resource.create(
        {name: value for name, value in defaults.items() if name not in given}
    )


_process: ProcessTracing | None = None
_process_lock = threading.Lock()


def process_tracing() -> ProcessTracing:
    """This process's tracing, made by the first call."""
    global _process  # noqa: PLW0603 - one tracer provider per process
    with _process_lock:
        if _process is None:
            _process = ProcessTracing()
        return _process


def flush(**_extra: Any) -> None:
    """Send the spans this process still holds."""
    if _process is not None:
        _process.provider.force_flush()


def without_query(url: str) -> str:
    """`url` without its query string, which may carry a credential."""
    return url.split("?", 1)[0]


def name_unmatched(span: trace.Span | None, _environ: Any) -> None:
    """A request no route serves is named by its method alone (as the
    specification says): its path is the client's, unbounded, and may hold
    a credential."""
    if span is not None and span.is_recording() and request.url_rule is None:
        span.update_name(getattr(span, "name", "HTTP").split(" ", 1)[0])


def hide_query(span: trace.Span | None, _status: str, _headers: Any) -> None:
    """A request's span holds its path, never its query string, nor a
    credential in its path (as its log line)."""
    if span is None or not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in ("http.target", "http.url", "url.full", "url.path"):
        value = attributes.get(name)
        if isinstance(value, str):
            cleaned = logs.CREDENTIAL.sub(logs.REDACTED, without_query(value))
            if cleaned != value:
                span.set_attribute(name, cleaned)
    if attributes.get("url.query"):
        span.set_attribute("url.query", logs.REDACTED)


class UntracedForeignHosts:
    """WSGI middleware: a request for a host TRUSTED_HOSTS does not name goes
    around the tracing. Flask answers it 400; the instrumentation reads its
    URL, which raises for such a host, and would make that a 500."""

    def __init__(
        self,
        traced: WSGIApplication,
        untraced: WSGIApplication,
        trusted_hosts: list[str],
    ) -> None:
        self.traced = traced
        self.untraced = untraced
        self.trusted_hosts = trusted_hosts

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            get_host(environ, self.trusted_hosts)
        except SecurityError:
            environ[UNTRACED] = True
            return self.untraced(environ, start_response)
        return self.traced(environ, start_response)


def unless_untraced(hook: Callable[..., Any]) -> Callable[..., Any]:
    """The instrumentation's request `hook`, skipped for an untraced request."""

    @functools.wraps(hook)
    def guarded(*args: Any) -> Any:
        if request.environ.get(UNTRACED):
            return None
        return hook(*args)

    return guarded


def instrument_flask(app: Flask, provider: TracerProvider, excluded: str) -> None:
    """A span for each of `app`'s requests but those `excluded` (URL patterns)."""
    hooks: tuple[list[Any], ...] = (
        app.before_request_funcs.setdefault(None, []),
        app.teardown_request_funcs.setdefault(None, []),
    )
    before = [len(registered) for registered in hooks]
    untraced = app.wsgi_app
    FlaskInstrumentor.instrument_app(  # type: ignore[no-untyped-call]
        app,
        tracer_provider=provider,
        excluded_urls=excluded,
        request_hook=name_unmatched,
        response_hook=hide_query,
        # Its context for SQL comments is attached for every request, never
        # detached, and read by no one: SQLAlchemy's comments are off.
        enable_commenter=False,
    )
    if trusted_hosts := app.config["TRUSTED_HOSTS"]:
        app.wsgi_app = UntracedForeignHosts(  # type: ignore[method-assign]
            app.wsgi_app, untraced, trusted_hosts
        )
        for registered, count in zip(hooks, before, strict=True):
            registered[count:] = [unless_untraced(hook) for hook in registered[count:]]


@functools.cache
def connections_usage() -> metrics.UpDownCounter:
    """The instrument SQLAlchemy's tracing counts pooled connections with (it
    measures nothing unless a meter provider is set)."""
    return metrics.get_meter(SQLALCHEMY_SCOPE).create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )


def trace_engines(app: Flask, provider: TracerProvider) -> None:
    """A span for each statement of `app`'s engines, which db.init_app made.

    Engine by engine, as ``SQLAlchemyInstrumentor().instrument(engine=...)``
    does; the instrumentor itself would work once per process, patch
    ``create_engine`` for every engine, and import SQLAlchemy's asyncio, which
    needs greenlet since SQLAlchemy 2.1. Its declared range ends before 2.1
    (0.66b2's still does), yet the engine events it listens to are 2.1's too:
    test_tracing.py shows the statements' spans.
    """
    tracer = provider.get_tracer(SQLALCHEMY_SCOPE, sqlalchemy_tracing_version)
    with app.app_context():
        engines = list(db.engines.values())
    for engine in engines:
        sqlalchemy_tracing.EngineTracer(  # type: ignore[no-untyped-call]
            tracer, engine, connections_usage()
        )


def library_instrumentors() -> dict[str, Callable[[], Any]]:
    """What each name of OTEL_PYTHON_DISABLED_INSTRUMENTATIONS turns off, but
    Flask's, which is per app; Celery's when this project runs jobs."""
    # BaseInstrumentors, which are singletons (mypy sees Any: its module is
    # not type-checked). SQLAlchemy's is per engine: trace_engines.
    found: dict[str, Callable[[], Any]] = {
        "urllib3": URLLib3Instrumentor,
        "redis": RedisInstrumentor,
    }
    celery = "opentelemetry.instrumentation.celery"
    if importlib.util.find_spec("celery") and importlib.util.find_spec(celery):
        found["celery"] = importlib.import_module(celery).CeleryInstrumentor
    return found


def instrument_libraries(provider: TracerProvider, skipped: frozenset[str]) -> None:
    """Instrument the libraries once per process."""
    options: dict[str, dict[str, Any]] = {"urllib3": {"url_filter": without_query}}
    instrumentors = library_instrumentors()
    for name, instrumentor in instrumentors.items():
        if name not in skipped and not instrumentor().is_instrumented_by_opentelemetry:
            instrumentor().instrument(tracer_provider=provider, **options.get(name, {}))
    if "celery" in instrumentors:
        # A prefork child ends without running atexit: send what it holds.
        signals: Any = importlib.import_module("celery.signals")
        signals.worker_process_shutdown.connect(
            flush, weak=False, dispatch_uid=f"{__name__}.flush"
        )


def end_failed_send(task_name: str, task_id: str, error: Exception) -> None:
    """End the span of a task whose sending raised (a broker that is down).

    Celery's instrumentation makes the span of a send current until Celery
    signals the message sent, which a send that raises never does. Left so,
    the span would stay open, and its context manager, when collected, would
    make it current again in whatever the thread runs then: a later query or
    task would join a trace that has ended.
    """
    # The instrumentation's own bookkeeping: the span, under the task its
    # signals name (the default Celery app's), and the send's id.
    utils: Any = importlib.import_module("opentelemetry.instrumentation.celery.utils")
    task = utils.retrieve_task_from_sender({"sender": task_name})
    found = utils.retrieve_context(task, task_id, is_publish=True)
    if found is None:
        return
    span, activation, _ = found
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    activation.__exit__(None, None, None)
    utils.detach_context(task, task_id, is_publish=True)


def init_app(app: Flask) -> None:
    """Trace `app`'s requests, and everything they do, as configured."""
    config = app.config
    if not config["TRACING_ENABLED"]:
        return
    tracing = process_tracing()
    tracing.sampler.sampler = sampler_named(
        config["TRACING_SAMPLER"], config["TRACING_SAMPLER_RATIO"]
    )
    tracing.export.configure(config["TRACING_EXPORTERS"], config["TRACING_EXPORTER"])
    logs.add_processor(add_trace_ids)
    skipped: frozenset[str] = config["TRACING_SKIPPED"]
    instrument_libraries(tracing.provider, skipped)
    if "sqlalchemy" not in skipped:
        trace_engines(app, tracing.provider)
    if "flask" not in skipped:
        excluded = config["TRACING_EXCLUDED_URLS"]
        instrument_flask(
            app, tracing.provider, QUIET_URLS if excluded is None else excluded
        )
