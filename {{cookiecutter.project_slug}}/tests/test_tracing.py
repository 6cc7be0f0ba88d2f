"""Tracing (observability/tracing.py): one trace per request, holding its
queries, Redis commands, outbound calls and tasks; its ids in the log lines;
the OTEL_* settings; and spans reaching a collector from Gunicorn's worker.

Spans go to an InMemorySpanExporter given to each app (TRACING_EXPORTER); the
testing configuration never exports anywhere else.
"""

from __future__ import annotations

{% if cookiecutter.use_celery == "yes" %}import gc
{% endif %}import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
{%- if cookiecutter.use_celery == "yes" %}
from celery import signals
{%- endif %}
from flask import Flask
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import (
    SpanKind,
{%- if cookiecutter.use_celery == "yes" %}
    StatusCode,
{%- endif %}
    format_span_id,
    format_trace_id,
)
from sqlalchemy import text

from {{ cookiecutter.package_name }}.config import ConfigError, load_config
from {{ cookiecutter.package_name }}.extensions import DISTRIBUTION, db
from {{ cookiecutter.package_name }}.models import Item
from {{ cookiecutter.package_name }}.observability import get_logger, tracing

from conftest import (
    GOOD_PRICE,
    PASSWORD,
    PRODUCTION_EXTRAS,
    PROJECT,
    AppFactory,
    RedisTarget,
    Server,
    signing_key_pem,
    wait_until,
)

SERVER = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
REGISTER = "/api/v1/auth/register"
NEW_ACCOUNT = {"email": "traced@example.com", "password": PASSWORD}
# A caller's traceparent: version, trace id, its span id, sampled.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(make_app: AppFactory, exporter: InMemorySpanExporter) -> Flask:
    """A testing app whose spans go to `exporter`."""
    return make_app(tables=True, TRACING_EXPORTER=exporter)


def named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [found] = [span for span in spans if span.name == name]
    return found


def scope_of(span: ReadableSpan) -> str:
    assert span.instrumentation_scope is not None
    return span.instrumentation_scope.name.rsplit(".", 1)[-1]


def under(
    spans: tuple[ReadableSpan, ...], root: ReadableSpan
) -> Callable[[ReadableSpan], bool]:
    """Whether a span descends from `root` (its parents lead there)."""
    assert root.context is not None
    by_id = {span.context.span_id: span for span in spans if span.context}

    def descends(span: ReadableSpan) -> bool:
        current: ReadableSpan | None = span
        while current is not None and current is not root:
            parent = current.parent
            current = by_id.get(parent.span_id) if parent is not None else None
        return current is root

    return descends


def ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format_trace_id(span.context.trace_id), format_span_id(span.context.span_id)


# --- One trace per request ----------------------------------------------------------


def test_a_request_and_its_queries_are_one_trace(
    traced: Flask, exporter: InMemorySpanExporter
) -> None:
    response = traced.test_client().post(REGISTER, json=NEW_ACCOUNT)
    assert response.status_code == 201
    spans = exporter.get_finished_spans()
    request = named(spans, f"POST {REGISTER}")
    assert request.kind is SpanKind.SERVER
    assert request.parent is None
    assert request.attributes is not None
    assert request.attributes["http.route"] == REGISTER
    # Named by their verb, and on PostgreSQL by the database too.
    statements = {
        span.name.split()[0] for span in spans if scope_of(span) == "sqlalchemy"
    }
    assert {"SELECT", "INSERT"} <= statements
    # Every span of the request is in its trace, under its span.
    assert all(map(under(spans, request), spans))
    # What the client sent stays out of the spans: statements carry no values.
    for span in spans:
        for value in (span.attributes or {}).values():
            assert NEW_ACCOUNT["email"] not in str(value)
            assert PASSWORD not in str(value)
{%- if cookiecutter.use_celery == "yes" %}


def test_the_task_a_request_queues_is_in_its_trace(
    traced: Flask, exporter: InMemorySpanExporter
) -> None:
    # Without a broker the welcome e-mail's task runs at once, in the request.
    assert traced.test_client().post(REGISTER, json=NEW_ACCOUNT).status_code == 201
    spans = exporter.get_finished_spans()
    request = named(spans, f"POST {REGISTER}")
    [task] = [span for span in spans if span.name.startswith("run/")]
    assert task.name.endswith(".send_welcome_email")
    assert task.kind is SpanKind.CONSUMER
    assert under(spans, request)(task)
    # The task's own query (it reads the new user) is under the task.
    in_task = under(spans, task)
    assert any(scope_of(span) == "sqlalchemy" for span in spans if in_task(span))


def test_a_task_that_cannot_be_sent_ends_its_span_and_leaves_none_current(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    # The broker is down: the sign-up succeeds, its e-mail is not queued.
    app = make_app(
        tables=True,
        TRACING_EXPORTER=exporter,
        CELERY_BROKER_URL="redis://127.0.0.1:9/0",
    )
    assert app.test_client().post(REGISTER, json=NEW_ACCOUNT).status_code == 201
    spans = exporter.get_finished_spans()
    request = named(spans, f"POST {REGISTER}")
    [send] = [span for span in spans if span.name.startswith("apply_async/")]
    assert send.kind is SpanKind.PRODUCER
    assert under(spans, request)(send)
    assert send.status.status_code is StatusCode.ERROR
    assert [event.name for event in send.events] == ["exception"]
    # Nothing of the request stays current, even once its garbage is gone.
    gc.collect()
    assert not trace.get_current_span().get_span_context().is_valid
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.remove()
    assert len(exporter.get_finished_spans()) == len(spans)
{%- endif %}


def test_spans_hold_no_query_string(
    traced: Flask, exporter: InMemorySpanExporter
) -> None:
    # A query string may carry a credential: spans, as log lines, leave it out.
    assert traced.test_client().get("/api/v1/items?token=s3cr3t-v4lue").status_code
    spans = exporter.get_finished_spans()
    request = named(spans, "GET /api/v1/items")
    assert request.attributes is not None
    assert request.attributes["http.target"] == "/api/v1/items"
    for span in spans:
        for value in (span.attributes or {}).values():
            assert "s3cr3t" not in str(value)


def test_a_path_no_route_serves_names_no_span_and_leaks_no_credential(
    traced: Flask, exporter: InMemorySpanExporter
) -> None:
    api_key = "ak_0123456789ab_hFISq9ENKGg-GEduibHPFqoQ_V30Tp1pKHO2zSwvjz4"
    assert traced.test_client().get(f"/nope/{api_key}").status_code == 404
    assert traced.test_client().get("/nope/other").status_code == 404
    spans = exporter.get_finished_spans()
    # One name for every unmatched path: no series per path, no key in it.
    assert [span.name for span in spans] == ["GET", "GET"]
    for span in spans:
        for value in (span.attributes or {}).values():
            assert api_key not in str(value)
    assert spans[0].attributes is not None
    assert spans[0].attributes["http.target"] == "/nope/[redacted]"


def test_a_host_trusted_hosts_refuses_is_answered_and_not_traced(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    app = make_app(
        tables=True, TRACING_EXPORTER=exporter, TRUSTED_HOSTS=["api.example.com"]
    )
    client = app.test_client()
    refused = client.get("/api/v1/items", headers={"Host": "evil.example.net"})
    assert refused.status_code == 400
    assert refused.mimetype == "application/problem+json"
    assert exporter.get_finished_spans() == ()
    trusted = client.get("/api/v1/items", headers={"Host": "api.example.com"})
    assert trusted.status_code == 200
    assert named(exporter.get_finished_spans(), "GET /api/v1/items")


def test_a_callers_traceparent_continues_its_trace(
    traced: Flask, exporter: InMemorySpanExporter
) -> None:
    response = traced.test_client().get(
        "/api/v1/items", headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    )
    assert response.status_code == 200
    request = named(exporter.get_finished_spans(), "GET /api/v1/items")
    assert ids(request)[0] == CALLER_TRACE
    assert request.parent is not None
    assert format_span_id(request.parent.span_id) == CALLER_SPAN


def test_redis_commands_are_in_the_requests_trace(
    make_app: AppFactory, exporter: InMemorySpanExporter, redis_target: RedisTarget
) -> None:
    app = make_app(
        tables=True,
        TRACING_EXPORTER=exporter,
        RATE_LIMITS_ENABLED=True,
        **redis_target.settings(),
    )
    # The read policy's counter lives in Redis.
    assert app.test_client().get("/api/v1/items").status_code == 200
    spans = exporter.get_finished_spans()
    request = named(spans, "GET /api/v1/items")
    commands = [span for span in spans if scope_of(span) == "redis"]
    assert commands
    assert all(map(under(spans, request), commands))


@dataclass
class Recorder:
    """A pricing service that answers GOOD_PRICE and keeps each call's headers."""

    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorded = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            recorded.headers.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(GOOD_PRICE)))
            self.end_headers()
            self.wfile.write(GOOD_PRICE)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet."""

    server = Server(("127.0.0.1", 0), Handler)
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield recorded
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_an_outbound_call_is_in_the_trace_and_carries_it_on(
    make_app: AppFactory, exporter: InMemorySpanExporter, recorder: Recorder
) -> None:
    app = make_app(tables=True, TRACING_EXPORTER=exporter, PRICING_URL=recorder.url)
    with app.app_context():
        item = Item(name="Priced")
        db.session.add(item)
        db.session.commit()
    response = app.test_client().get(f"/api/v1/items/{item.id}/price")
    assert response.status_code == 200, response.get_data(as_text=True)
    spans = exporter.get_finished_spans()
    request = named(spans, "GET /api/v1/items/<int:item_id>/price")
    [call] = [span for span in spans if scope_of(span) == "urllib3"]
    assert call.kind is SpanKind.CLIENT
    assert under(spans, request)(call)
    trace_id, span_id = ids(call)
    # The pricing service is told which trace and span the call belongs to.
    [headers] = recorder.headers
    version, sent_trace, sent_span, flags = headers["traceparent"].split("-")
    assert (version, sent_trace, sent_span) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled


def test_probes_and_scrapes_are_not_traced(
    traced: Flask, exporter: InMemorySpanExporter
) -> None:
    client = traced.test_client()
    for path in ("/health/live", "/health/ready", "/health/startup", "/metrics"):
        client.get(path)
    # Their queries neither: a query outside any request starts no trace.
    assert exporter.get_finished_spans() == ()


def test_queries_outside_a_request_or_task_start_no_trace(
    traced: Flask, exporter: InMemorySpanExporter
) -> None:
    with traced.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.remove()
    assert exporter.get_finished_spans() == ()
    # A span of the app's own, outside a request, is a trace of its own.
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span("nightly-report"), traced.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.remove()
    spans = exporter.get_finished_spans()
    report = named(spans, "nightly-report")
    assert report.parent is None
    assert [span.name for span in spans if under(spans, report)(span)] != [
        "nightly-report"
    ]


# --- Ids in the log lines -----------------------------------------------------------


def json_lines(captured: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.splitlines() if line.startswith("{")]


def test_log_lines_name_their_trace_and_span(
    make_app: AppFactory,
    exporter: InMemorySpanExporter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = make_app(tables=True, TRACING_EXPORTER=exporter, LOG_FORMAT="json")
    capsys.readouterr()
    assert app.test_client().post(REGISTER, json=NEW_ACCOUNT).status_code == 201
    get_logger(__name__).info("after the request")
    lines = json_lines(capsys.readouterr().err)
    spans = exporter.get_finished_spans()
    request = named(spans, f"POST {REGISTER}")
    [line] = [line for line in lines if line["event"] == "request"]
    assert (line["trace_id"], line["span_id"]) == ids(request)
    # Every line of the request is in its trace (a task's in the task's span).
    trace_id, _ = ids(request)
    of_request = [line for line in lines if line.get("request_id")]
    assert {line["trace_id"] for line in of_request} == {trace_id}
    span_ids = {ids(span)[1] for span in spans}
    assert {line["span_id"] for line in of_request} <= span_ids
    # A line written outside any span has no ids.
    [outside] = [line for line in lines if line["event"] == "after the request"]
    assert "trace_id" not in outside
    assert "span_id" not in outside


# --- Settings -----------------------------------------------------------------------


def settings(**environ: str) -> dict[str, Any]:
    return load_config("development", environ).settings()


def test_spans_are_exported_only_where_the_environment_says() -> None:
    # No endpoint: spans are made, and sent nowhere (not to localhost:4318).
    assert settings()["TRACING_EXPORTERS"] == ()
    endpoint = "http://collector.internal:4318"
    assert settings(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)["TRACING_EXPORTERS"] == (
        "otlp",
    )
    traces_endpoint = f"{endpoint}/v1/traces"
    assert settings(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=traces_endpoint)[
        "TRACING_EXPORTERS"
    ] == ("otlp",)
    assert settings(OTEL_TRACES_EXPORTER="console, otlp")["TRACING_EXPORTERS"] == (
        "console",
        "otlp",
    )
    assert (
        settings(OTEL_TRACES_EXPORTER="none", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)[
            "TRACING_EXPORTERS"
        ]
        == ()
    )


def test_tests_never_export_to_a_collector() -> None:
    config = load_config(
        "testing", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.internal:4318"}
    )
    assert config.settings()["TRACING_EXPORTERS"] == ()


def test_the_sampler_and_switches_come_from_the_environment() -> None:
    chosen = settings(
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.25",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="redis, urllib3",
        OTEL_PYTHON_FLASK_EXCLUDED_URLS="",
    )
    assert (chosen["TRACING_SAMPLER"], chosen["TRACING_SAMPLER_RATIO"]) == (
        "parentbased_traceidratio",
        0.25,
    )
    assert chosen["TRACING_SKIPPED"] == {"redis", "urllib3"}
    assert chosen["TRACING_EXCLUDED_URLS"] == ""
    assert settings(OTEL_SDK_DISABLED="true")["TRACING_ENABLED"] is False
    description = tracing.sampler_named("parentbased_traceidratio", 0.25)
    assert "TraceIdRatioBased{0.25}" in description.get_description()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER names zipkin"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf only"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "is not an http://"),
        # Milliseconds, as the specification has it; the Python SDK reads seconds.
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}, "number of seconds, at most 60"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "is not a ratio from 0 to 1",
        ),
        (
            {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "django"},
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names django",
        ),
        ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED='maybe'"),
        # The SDK would raise these when the first span ends, in a request.
        (
            {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=4096 is more than OTEL_BSP_MAX_QUEUE_SIZE",
        ),
        ({"OTEL_BSP_SCHEDULE_DELAY": "-1"}, "OTEL_BSP_SCHEDULE_DELAY='-1' must be"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE='0' must be"),
    ],
)
def test_a_bad_otel_setting_stops_the_start_up(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("development", environ)


def test_sampled_out_requests_are_not_exported(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    app = make_app(tables=True, TRACING_EXPORTER=exporter, TRACING_SAMPLER="always_off")
    assert app.test_client().get("/api/v1/items").status_code == 200
    assert exporter.get_finished_spans() == ()


def test_with_tracing_off_the_app_is_not_instrumented(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    make_app(tables=True, TRACING_EXPORTER=exporter)  # the process traces
    app = make_app(tables=True, TRACING_ENABLED=False)
    assert app.test_client().get("/api/v1/items").status_code == 200
    assert exporter.get_finished_spans() == ()


def test_an_excluded_url_setting_replaces_the_default(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    app = make_app(
        tables=True, TRACING_EXPORTER=exporter, TRACING_EXCLUDED_URLS="/api/v1/items"
    )
    client = app.test_client()
    assert client.get("/api/v1/items").status_code == 200
    assert client.get("/health/live").status_code == 200
    assert [span.name for span in exporter.get_finished_spans()] == ["GET /health/live"]


# --- Export -------------------------------------------------------------------------


def export_threads() -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("OtelBatch")
    ]


def test_no_exporter_runs_before_a_span_ends(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    before = export_threads()
    make_app(TRACING_EXPORTERS=("console",))
    # Building the app (as a server's worker does) starts no thread.
    assert export_threads() == before
    with trace.get_tracer(__name__).start_as_current_span("first"):
        pass
    started = [thread for thread in export_threads() if thread not in before]
    assert len(started) == 1
    # The next app's settings replace these; what was held is sent first.
    make_app()
    wait_until(lambda: not started[0].is_alive(), what="the export thread to end")
    assert '"name": "first"' in capsys.readouterr().out
{%- if cookiecutter.use_celery == "yes" %}


def test_a_worker_process_sends_what_it_holds_before_it_ends(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    make_app(TRACING_EXPORTERS=("console",))
    with trace.get_tracer(__name__).start_as_current_span("last-task"):
        pass
    # A prefork child ends without atexit: Celery's signal is its last word.
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    assert '"name": "last-task"' in capsys.readouterr().out
    make_app()
{%- endif %}


def test_the_otlp_exporter_is_made_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/x")
    exporter = tracing.exporter_named("otlp")
    # Made, not connected: nothing is sent before a span ends.
    assert type(exporter).__name__ == "OTLPSpanExporter"
    exporter.shutdown()


class Collector:
    """An OTLP/HTTP collector on 127.0.0.1 that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.paths.append(self.path)
                collector.requests.append(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet."""

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True
        )
        self.thread.start()

    def spans(self) -> list[tuple[dict[str, str], str]]:
        """Each span received, with its resource's string attributes."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {
                    attribute.key: attribute.value.string_value
                    for attribute in resource_spans.resource.attributes
                }
                found += [
                    (resource, span.name)
                    for scope_spans in resource_spans.scope_spans
                    for span in scope_spans.spans
                ]
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def collector() -> Iterator[Collector]:
    started = Collector()
    yield started
    started.close()


@pytest.mark.standalone
def test_gunicorns_worker_sends_its_spans_to_the_collector(
    collector: Collector,
) -> None:
    """The worker, forked from a master that imported the package, exports."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "FLASK_", "APP_", "GUNICORN_", "JWT_"))
        and name not in {"DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY"}
    }
    env.update(
        PRODUCTION_EXTRAS,
        APP_ENV="production",
        SECRET_KEY="k" * 8 + "3vQ9-xT_4mWz7Lr2Pb6Yc1Nd8Hs5Jf0Ga",
        JWT_PRIVATE_KEY=signing_key_pem(),
        DATABASE_URL="sqlite://",
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_SERVICE_NAME="traced-service",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    server = subprocess.Popen(  # noqa: S603 - a fixed command line
        [*SERVER, "wsgi:application"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60  # a loaded CI machine is slow to import
        answered = False
        while not answered:
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "gunicorn did not start"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    conn.sendall(
                        b"GET /api/v1/items HTTP/1.1\r\nHost: localhost\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                    answered = conn.recv(12).startswith(b"HTTP/1.1")
            except OSError:
                time.sleep(0.1)
        wait_until(
            lambda: any(name == "GET /api/v1/items" for _, name in collector.spans()),
            seconds=10,
            what="the request's span at the collector",
        )
    finally:
        server.terminate()
        server.communicate(timeout=45)
    assert set(collector.paths) == {"/v1/traces"}
    resource, _ = next(
        found for found in collector.spans() if found[1] == "GET /api/v1/items"
    )
    assert resource["service.name"] == "traced-service"
    assert resource["service.version"] == DISTRIBUTION["Version"]
