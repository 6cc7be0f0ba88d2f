"""Logs, request ids and metrics (observability/)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pybreaker
import pytest
import structlog
from flask import Flask, abort
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.package_name }}.auth import users
from {{ cookiecutter.package_name }}.config import ConfigError, load_config
from {{ cookiecutter.package_name }}.observability import (
    get_logger,
    logs,
    metrics,
)
from {{ cookiecutter.package_name }}.resilience import (
    backpressure,
    breakers,
    events,
)

from conftest import (
    PASSWORD,
    AppFactory,
    FakeUpstream,
    Reply,
    add_account,
    problem,
    production_settings,
    signed_in,
)

ITEMS = "/api/v1/items"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
TOKEN = "m" * 8 + "Q7vT2xL9pR4wZ8nK1cY6bH3jF5dS0gA"


@pytest.fixture
def json_app(make_app: AppFactory) -> Flask:
    """A testing app that writes JSON lines, with tables."""
    return make_app(LOG_FORMAT="json", tables=True)


def logged(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The log lines written since the last call, each parsed as JSON."""
    written = capsys.readouterr().err
    return [json.loads(line) for line in written.splitlines() if line.strip()]


def request_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [line for line in logged(capsys) if line["event"] == "request"]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called `name` in a Prometheus exposition, by their labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def scrape(app: Flask, **headers: str) -> str:
    answer = app.test_client().get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


def series_count(text: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


# --- Request ids ---------------------------------------------------------------


def test_a_sane_request_id_is_kept_and_echoed(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = json_app.test_client().get(ITEMS, headers={"X-Request-ID": "req-42.a:b"})
    assert answer.headers["X-Request-ID"] == "req-42.a:b"
    (line,) = request_lines(capsys)
    assert line["request_id"] == "req-42.a:b"


@pytest.mark.parametrize(
    "incoming",
    ["", "has space", "x" * 129, 'quo"te', "new\\nline", "ünï", "a;b", "{json}"],
)
def test_an_invalid_request_id_is_replaced(json_app: Flask, incoming: str) -> None:
    headers = {"X-Request-ID": incoming} if incoming else {}
    answer = json_app.test_client().get(ITEMS, headers=headers)
    assert GENERATED_ID.fullmatch(answer.headers["X-Request-ID"])


def test_problem_documents_carry_the_request_id(json_app: Flask) -> None:
    client = json_app.test_client()
    missing = client.get("/nowhere", headers={"X-Request-ID": "trace-me"})
    assert missing.json is not None
    assert missing.json["request_id"] == "trace-me"
    invalid = client.post(ITEMS, json={}, headers={"X-Request-ID": "bad-body"})
    assert invalid.json is not None
    assert invalid.json["request_id"] == "bad-body"
    # conftest.problem() checks the document against the header for every test.
    problem(client.get("/nowhere"), 404)


def test_every_line_of_a_request_carries_its_id(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    @json_app.get("/chatty")
    def chatty() -> str:
        logging.getLogger("some.library").warning("from the standard library")
        get_logger("my.module").info("from structlog", answer=42)
        return "ok"

    json_app.test_client().get("/chatty", headers={"X-Request-ID": "chatty-1"})
    stdlib, native, request = logged(capsys)
    assert {line["request_id"] for line in (stdlib, native, request)} == {"chatty-1"}
    assert (stdlib["logger"], stdlib["level"]) == ("some.library", "warning")
    assert (native["event"], native["answer"]) == ("from structlog", 42)
    assert {line["route"] for line in (stdlib, native, request)} == {"/chatty"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", request["timestamp"])


def test_the_request_line_says_what_happened(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    (client,) = signed_in(json_app)
    logged(capsys)  # the account's creation
    client.get(f"{ITEMS}/7?secret=shh", headers={"X-Request-ID": "line-1"})
    (line,) = request_lines(capsys)
    assert line["method"] == "GET"
    assert line["route"] == "/api/v1/items/<int:item_id>"
    assert line["path"] == "/api/v1/items/7"  # never the query string
    assert line["status"] == 404
    assert line["duration_ms"] > 0
    assert line["level"] == "info"
    # A read needs no credential, so none was checked: no user is known.
    assert line["user_id"] is None
    client.post(ITEMS, json={"name": "Logged"})
    (write,) = request_lines(capsys)
    assert (write["status"], write["user_id"]) == (201, signed_in_user(json_app))


def signed_in_user(app: Flask) -> int:
    with app.app_context():
        user = users.find_user("writer@example.com")
        assert user is not None
        return user.id


def test_anonymous_requests_have_no_user(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    json_app.test_client().get(ITEMS)
    (line,) = request_lines(capsys)
    assert line["user_id"] is None


def test_probes_are_logged_at_debug(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    app.test_client().get("/health/live")
    (line,) = request_lines(capsys)
    assert line["level"] == "debug"
    quiet = make_app(LOG_FORMAT="json")
    quiet.test_client().get("/health/live")
    assert request_lines(capsys) == []


def test_an_unhandled_error_is_one_json_line_with_its_traceback(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    @json_app.get("/explode")
    def explode() -> str:
        token = "local-value-that-must-stay-hidden"
        raise RuntimeError("boom " + token[:5])

    answer = json_app.test_client().get("/explode", headers={"X-Request-ID": "x-1"})
    assert answer.status_code == 500
    error, request = logged(capsys)
    assert error["level"] == "error"
    assert error["request_id"] == "x-1"
    assert "Traceback" in error["exception"]
    assert "RuntimeError: boom local" in error["exception"]
    # Tracebacks carry no local variables.
    assert "must-stay-hidden" not in json.dumps([error, request])
    assert request["status"] == 500


@pytest.mark.usefixtures("json_app")  # configures JSON lines
def test_the_development_servers_request_lines_give_way_to_the_apps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.info("%s - - [%s] %s", "127.0.0.1", "now", "banner")
    werkzeug.info(
        '%s - - [now] "%s" %s %s', "127.0.0.1", "GET /?token=x HTTP/1.1", 200, 5
    )
    (line,) = logged(capsys)
    assert line["event"] == "127.0.0.1 - - [now] banner"


def test_development_logs_are_readable_lines(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(
        "development", LOG_FORMAT="console", SQLALCHEMY_DATABASE_URI="sqlite://"
    )
    app.test_client().get("/health/ready", headers={"X-Request-ID": "dev-1"})
    app.logger.warning("plain words")
    written = capsys.readouterr().err
    assert "plain words" in written
    assert not written.lstrip().startswith("{")


# --- No secret in any line -----------------------------------------------------


def test_secrets_never_reach_a_log_line(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(
        LOG_FORMAT="json",
        LOG_LEVEL="DEBUG",
        METRICS_TOKEN=TOKEN,
        MAIL_PASSWORD="smtp-password-1234",
        tables=True,
    )
    known: dict[str, str] = {}

    @app.get("/careless")
    def careless() -> str:
        # Code that logs what it should not: fields by name, values by value.
        log = get_logger("careless")
        log.info("login", password=PASSWORD, headers={"Authorization": known["access"]})
        log.info("config", settings={"nested": [{"api_key": known["api_key"]}]})
        logging.getLogger("careless").warning(
            "key %s and secret %s", app.config["SECRET_KEY"], TOKEN
        )
        abort(400, "refused")

    account = add_account(app)
    client = app.test_client()
    token_answer = client.post(
        "/api/v1/auth/token", json={"email": account.email, "password": PASSWORD}
    )
    tokens = token_answer.json
    assert tokens is not None
    access = tokens["access_token"]
    refresh = tokens["refresh_token"]
    known.update(access=access, api_key=account.api_key)
    secrets = [
        PASSWORD,
        access,
        refresh,
        account.api_key,
        app.config["SECRET_KEY"],
        TOKEN,
        "smtp-password-1234",
        *(
            line
            for line in (app.config["JWT_PRIVATE_KEY"] or "").splitlines()
            if "--" not in line
        ),
    ]
    client.get(ITEMS, headers={"Authorization": f"Bearer {access}"})
    client.get(ITEMS, headers={"X-API-Key": account.api_key})
    client.get(ITEMS, headers={"Authorization": "Bearer " + access[:-2] + "xx"})
    client.get(ITEMS, headers={"Cookie": f"session={refresh}"})
    client.get(f"{ITEMS}?api_key={account.api_key}&password={PASSWORD}")
    client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    client.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
    stranger = {"email": "x@example.com", "password": PASSWORD}
    client.post("/api/v1/auth/token", json=stranger)

    client.get("/careless")
    written = capsys.readouterr().err
    assert written.count("\n") > 10
    for secret in secrets:
        assert secret not in written
    assert written.count(logs.REDACTED) >= 4


@pytest.mark.usefixtures("json_app")  # configures JSON lines
def test_refused_request_lines_lose_their_query_string(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.getLogger("gunicorn.error").warning(
        "Invalid request from ip=%s: %s",
        "10.0.0.1",
        "'GET /a?api_key=k1&x=\\t HTTP/1.1'",
    )
    (line,) = logged(capsys)
    assert "k1" not in line["event"]
    assert line["event"].endswith("'GET /a?[query removed] HTTP/1.1'")


@pytest.mark.parametrize(
    "error",
    [
        "Invalid HTTP Header: 'X-API-Key ak_0123456789ab_s3cr3t'",
        "Invalid HTTP header name: 'Cookie\\x01session=s3cr3t'",
        "Unable to comply with expectation: 's3cr3t'",
        "Unsupported transfer coding: 's3cr3t'",
        "No more data after: b'Authorization: Bearer s3cr3t'",
    ],
)
def test_refused_headers_are_left_out_of_gunicorns_lines(
    capsys: pytest.CaptureFixture[str], error: str
) -> None:
    logging.getLogger("gunicorn.error").warning(
        "Invalid request from ip=%s: %s", "10.0.0.1", error
    )
    (line,) = logged(capsys)
    kind = error.split(": ", 1)[0]
    assert line["event"] == f"Invalid request from ip=10.0.0.1: {kind}: [removed]"


def test_a_question_in_gunicorns_own_messages_is_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.getLogger("gunicorn.error").error(
        "Worker (pid:%s) was sent SIGKILL! Perhaps out of memory?", 42
    )
    (line,) = logged(capsys)
    assert line["event"].endswith("Perhaps out of memory?")


LONG_PATH = "/" + "a" * 3999
CUT_PATH = "/" + "a" * 255 + "...[cut: 4000 characters]"
REFUSED_LINE = "Invalid request from ip=10.0.0.1: Invalid HTTP request line: "


def test_a_long_path_is_cut_in_the_request_line(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    assert json_app.test_client().get(LONG_PATH).status_code == 404
    written = capsys.readouterr().err
    (line,) = [json.loads(text) for text in written.splitlines()]
    assert line["path"] == CUT_PATH
    assert len(written) < 1024


def test_a_long_path_is_cut_where_an_error_quotes_it(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    @json_app.get("/explode/<path:rest>")
    def explode(rest: str) -> str:
        raise RuntimeError(rest[:5])

    assert json_app.test_client().get("/explode" + LONG_PATH).status_code == 500
    error, request = logged(capsys)
    assert error["event"].endswith("...[cut: 4008 characters]'")
    assert len(error["event"]) < 350
    assert len(request["path"]) < 300


@pytest.mark.usefixtures("json_app")  # configures JSON lines
@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (
            f"{REFUSED_LINE}'GET {LONG_PATH}?key=k1 HTTP/1.1'",
            f"{REFUSED_LINE}'GET /aaa",
        ),
        (
            f"Error handling request GET {LONG_PATH}?key=k1",
            "Error handling request GET /aaa",
        ),
    ],
    ids=["refused", "failed"],
)
def test_a_long_path_is_cut_in_gunicorns_own_lines(
    capsys: pytest.CaptureFixture[str], message: str, kept: str
) -> None:
    logging.getLogger("gunicorn.error").warning("%s", message)
    (line,) = logged(capsys)
    event = line["event"]
    assert event.startswith(kept)
    # The quoted part is cut to 256 characters, and says so.
    assert re.search(r"a\.\.\.\[cut: 40\d\d characters\]$", event)
    assert len(event) < 400
    assert "k1" not in event


def test_a_token_in_a_path_is_cut_out(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    api_key = "ak_0123456789ab_hFISq9ENKGg-GEduibHPFqoQ_V30Tp1pKHO2zSwvjz4"
    json_app.test_client().get(f"/api/v1/auth/me/{token}")
    json_app.test_client().get(f"/nope/{api_key}")
    written = capsys.readouterr().err
    assert token not in written
    assert "/api/v1/auth/me/[redacted]" in written
    assert api_key not in written
    assert "/nope/[redacted]" in written


def test_failed_probes_and_scrapes_are_logged_at_info(
    production_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = production_app()
    capsys.readouterr()
    assert app.test_client().get("/metrics").status_code == 403
    (line,) = request_lines(capsys)
    assert (line["level"], line["status"]) == ("info", 403)


def test_redaction_reaches_nested_fields() -> None:
    hidden = logs.REDACTED
    redacted = logs.redact({"a": [{"Set-Cookie": "x", "ok": 1}], "PASSWORD": "p"})
    assert redacted == {"a": [{"Set-Cookie": hidden, "ok": 1}], "PASSWORD": hidden}


def test_secrets_of_settings_include_passwords_inside_urls() -> None:
    found = logs.secrets_of(
        {
            "SECRET_KEY": "a-long-secret-key",
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://app:db-pass-99@db/app",
            "REDIS_URL": "redis://:redis-pass-77@cache:6379/0",
            "CELERY_BROKER_URL": "amqp://guest@rabbit//",
            "OIDC_PROVIDERS": {"google": {"client_secret": "oidc-secret-55"}},
        }
    )
    assert set(found) == {
        "a-long-secret-key",
        "db-pass-99",
        "redis-pass-77",
        "oidc-secret-55",
    }


def test_secrets_are_cut_out_however_a_line_writes_them(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # JSON escapes the quote, the backslash and the "ö"; a URL's password is
    # percent-encoded in the setting and may be logged decoded.
    key = 'k3y"with\\quotes-and-ümlauts-9QzX'
    make_app(
        LOG_FORMAT="json",
        SECRET_KEY=key,
        REDIS_URL="redis://:p%40ss-w0rd-77@127.0.0.1:9/0",
    )
    capsys.readouterr()
    log = get_logger("careless")
    log.info("configured", key=key)
    log.info("connecting with p@ss-w0rd-77")
    written = capsys.readouterr().err
    assert json.dumps(key)[1:-1] not in written
    assert "p@ss-w0rd-77" not in written
    assert written.count(logs.REDACTED) == 2


# --- Settings ------------------------------------------------------------------


def test_log_settings_come_from_the_environment() -> None:
    config = load_config("testing", {"LOG_LEVEL": "warning", "LOG_FORMAT": "JSON"})
    assert (config.LOG_LEVEL, config.LOG_FORMAT) == ("WARNING", "json")
    assert load_config("production", production_settings()).LOG_FORMAT == "json"
    assert load_config("development", {}).LOG_FORMAT == "console"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is not one of"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml' is not one of"),
        ({"METRICS_ENABLED": "maybe"}, "METRICS_ENABLED='maybe' is not a yes/no"),
        ({"METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,lan"}, "'lan' is not a network"),
    ],
)
def test_bad_observability_settings_name_the_variable(
    variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("testing", variables)


def test_production_refuses_a_short_metrics_token(
    production_app: AppFactory,
) -> None:
    with pytest.raises(ConfigError, match="METRICS_TOKEN is shorter than 32"):
        production_app(METRICS_TOKEN="short")


# --- Metrics -------------------------------------------------------------------


def test_requests_are_counted_by_route_template(json_app: Flask) -> None:
    client = json_app.test_client()
    for item_id in (1, 2, 3):
        client.get(f"{ITEMS}/{item_id}")
    client.get(ITEMS)
    text = scrape(json_app)
    counts = samples(text, "http_requests_total")
    route = ("route", "/api/v1/items/<int:item_id>")
    item = (("method", "GET"), route, ("status", "404"))
    assert counts[item] == 3
    assert counts[(("method", "GET"), ("route", ITEMS), ("status", "200"))] == 1
    latency = samples(text, "http_request_duration_seconds_count")
    assert latency[item] == 3
    buckets = samples(text, "http_request_duration_seconds_bucket")
    assert buckets[tuple(sorted((*item, ("le", "+Inf"))))] == 3


def test_a_thousand_distinct_urls_add_a_bounded_number_of_series(
    json_app: Flask,
) -> None:
    client = json_app.test_client()
    client.get("/warm-up")
    client.get(f"{ITEMS}/0")
    before = series_count(scrape(json_app))
    for number in range(1000):
        client.get(f"/no/such/page/{number}")
        client.get(f"{ITEMS}/{number}")
    client.open("/anything", method="BREW")
    after = series_count(scrape(json_app))
    # Two new label sets: the scrape's own (GET /metrics 200) and the strange
    # method's (other, unmatched, 404). Each has a counter (_total, _created)
    # and a histogram (a bucket per bound and +Inf, _count, _sum, _created).
    per_label_set = 2 + len(metrics.LATENCY_BUCKETS) + 4
    assert after - before == 2 * per_label_set


# A process counting into PROMETHEUS_MULTIPROC_DIR, as a Gunicorn worker does.
COUNTING_PROCESS = """
import sys
from prometheus_client import Counter, Histogram
Counter("jobs", "Jobs.", ["kind"]).labels("a").inc(int(sys.argv[1]))
Histogram("wait_seconds", "Waits.", buckets=(1,)).observe(0.5)
"""


def test_dead_workers_counts_move_to_one_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROCESS_VARIABLE, str(tmp_path))
    pids = []
    for count in (1, 2, 3, 4):
        command = [sys.executable, "-c", COUNTING_PROCESS, str(count)]
        with subprocess.Popen(command) as process:  # noqa: S603 - our own interpreter
            assert process.wait(timeout=60) == 0
        pids.append(process.pid)
    for dead in pids[:3]:
        metrics.worker_exited(dead)
    # The live process's files, and one per kind for all the dead.
    assert {path.name for path in tmp_path.glob("*.db")} == {
        "counter_archive.db",
        f"counter_{pids[3]}.db",
        "histogram_archive.db",
        f"histogram_{pids[3]}.db",
    }
    registry = CollectorRegistry()
    metrics.SettledFilesCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("jobs_total", {"kind": "a"}) == 1 + 2 + 3 + 4
    assert registry.get_sample_value("wait_seconds_count") == 4
    assert registry.get_sample_value("wait_seconds_bucket", {"le": "1.0"}) == 4
    # The last one goes too: the totals stay.
    metrics.worker_exited(pids[3])
    assert len(list(tmp_path.glob("*.db"))) == 2
    assert registry.get_sample_value("jobs_total", {"kind": "a"}) == 10


def test_a_dead_workers_damaged_file_is_removed_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It would fail every scrape; raising would stop Gunicorn's master.
    monkeypatch.setenv(metrics.MULTIPROCESS_VARIABLE, str(tmp_path))
    (tmp_path / "counter_5.db").write_bytes(b"not a metrics file")
    metrics.worker_exited(5)
    assert list(tmp_path.glob("*.db")) == []
    assert "removed unreadable metrics file counter_5.db" in caplog.text
    # A directory gone from under it is logged too.
    monkeypatch.setenv(metrics.MULTIPROCESS_VARIABLE, str(tmp_path / "gone"))
    metrics.worker_exited(6)
    assert "could not archive the metrics of process 6" in caplog.text


def test_unknown_methods_share_one_label(json_app: Flask) -> None:
    client = json_app.test_client()
    for method in ("BREW", "PURGE", "X-CUSTOM"):
        client.open(ITEMS, method=method)
    counts = samples(scrape(json_app), "http_requests_total")
    # A 405 matched no route (none takes the method): its route is unmatched.
    assert counts[(("method", "other"), ("route", "unmatched"), ("status", "405"))] == 3


def test_rate_limit_rejections_are_counted_by_policy(make_app: AppFactory) -> None:
    app = make_app(
        RATE_LIMITS_ENABLED=True,
        RATELIMIT_DEFAULT="1 per minute",
        RESILIENCE_POLICIES={"read": {"limit": "1 per minute"}, "write": {}},
        tables=True,
    )
    client = app.test_client()
    for _ in range(3):
        client.get(ITEMS)
        client.get("/api/openapi.json")
    counts = samples(scrape(app), "rate_limit_rejections_total")
    assert counts[(("policy", "read"),)] == 2
    assert counts[(("policy", "default"),)] == 2


def test_load_shedding_is_counted(make_app: AppFactory) -> None:
    app = make_app(MAX_IN_FLIGHT=1, tables=True)
    release = threading.Event()
    entered = threading.Event()

    @app.get("/slow")
    def slow() -> str:
        entered.set()
        release.wait(10)
        return "done"

    waiting = threading.Thread(target=lambda: app.test_client().get("/slow"))
    waiting.start()
    try:
        assert entered.wait(5)
        other = {"environ_base": {"REMOTE_ADDR": "10.0.0.2"}}
        assert app.test_client().get(ITEMS, **other).status_code == 503
        assert app.extensions[backpressure.EXTENSION_KEY].shed == 1
        # The holder's own excess is a 429 of its own policy, not a shed.
        assert app.test_client().get(ITEMS).status_code == 429
        # /metrics is never shed: it answers while the worker is full.
        metrics = scrape(app)
    finally:
        release.set()
        waiting.join(5)
    assert samples(metrics, "load_shed_total") == {(("route", ITEMS),): 1}
    assert samples(metrics, "rate_limit_rejections_total") == {
        (("policy", backpressure.IN_FLIGHT_POLICY),): 1
    }


def test_idempotent_replays_are_counted(app: Flask) -> None:
    (client,) = signed_in(app)
    key = {"Idempotency-Key": "count-me"}
    for _ in range(3):
        client.post(ITEMS, json={"name": "Once"}, headers=key)
    counts = samples(scrape(app), "idempotent_replays_total")
    assert counts == {(("route", ITEMS),): 2}


def test_cache_hits_and_misses_are_counted(make_app: AppFactory) -> None:
    app = make_app(
        CACHE_TYPE="{{ cookiecutter.package_name }}.resilience.memory_cache.MemoryCache",
        tables=True,
    )
    client = app.test_client()
    for _ in range(3):
        client.get(ITEMS)
    counts = samples(scrape(app), "cache_lookups_total")
    assert counts[(("result", "hit"),)] == 2
    assert counts[(("result", "miss"),)] >= 1


def test_breaker_changes_and_state_are_reported(
    make_app: AppFactory, pricing_upstream: FakeUpstream
) -> None:
    app = make_app(PRICING_URL=pricing_upstream.url, tables=True)
    (client,) = signed_in(app)
    assert client.post(ITEMS, json={"name": "Priced"}).status_code == 201
    before = samples(scrape(app), "circuit_breaker_state")
    assert before[(("breaker", "pricing"), ("state", "closed"))] == 1
    pricing_upstream.default = Reply(status=500)
    for _ in range(5):  # fail_max
        client.get(f"{ITEMS}/1/price")
    text = scrape(app)
    state = samples(text, "circuit_breaker_state")
    assert state[(("breaker", "pricing"), ("state", "open"))] == 1
    assert state[(("breaker", "pricing"), ("state", "closed"))] == 0
    changes = samples(text, "circuit_breaker_transitions_total")
    assert changes[(("breaker", "pricing"), ("state", "open"))] == 1


def failing() -> None:
    raise ConnectionError("the upstream is down")


def test_a_change_another_worker_made_is_counted_by_that_worker_only(
    app: Flask,
) -> None:
    # Two workers' breakers over one shared state (Redis, in production).
    shared = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    here, there = (
        breakers.ConcurrentBreaker(
            shared, name="shared", fail_max=1, listeners=[breakers.LoggingListener()]
        )
        for _ in range(2)
    )
    reported: list[str] = []

    def count(_sender: object, **details: Any) -> None:
        reported.append(details["state"])

    with app.app_context(), events.breaker_changed.connected_to(count):
        with pytest.raises(pybreaker.CircuitBreakerError):
            there.call(failing)  # fail_max 1: this failure opens it
        assert here.state.name == pybreaker.STATE_OPEN  # noticed, not made
    assert reported == [pybreaker.STATE_OPEN]


def test_metrics_can_be_turned_off(make_app: AppFactory) -> None:
    app = make_app(METRICS_ENABLED=False)
    client = app.test_client()
    client.get(ITEMS)
    assert client.get("/metrics").status_code == 404


# --- Who may read /metrics -----------------------------------------------------


@pytest.fixture
def production_app(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> AppFactory:
    """Build production apps from the environment production_settings() gives."""

    def build(**variables: str) -> Flask:
        for name, value in production_settings(
            DATABASE_URL="sqlite://", **variables
        ).items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("FLASK_DEBUG", raising=False)
        return make_app("production")

    return build


def test_production_metrics_are_not_public(production_app: AppFactory) -> None:
    app = production_app()
    refused = app.test_client().get("/metrics")
    body = problem(refused, 403)
    assert "METRICS_TOKEN" in body["detail"]
    assert "http_requests_total" not in refused.get_data(as_text=True)


def test_the_metrics_token_opens_metrics(production_app: AppFactory) -> None:
    app = production_app(METRICS_TOKEN=TOKEN)
    client = app.test_client()

    def status(authorization: str) -> int:
        answer = client.get("/metrics", headers={"Authorization": authorization})
        return answer.status_code

    assert status(f"Bearer {TOKEN}") == status(f"bearer {TOKEN}") == 200
    for wrong in (f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer", TOKEN):
        assert status(wrong) == 403


def test_allowed_networks_open_metrics(production_app: AppFactory) -> None:
    app = production_app(METRICS_ALLOWED_NETWORKS="10.0.0.0/8, 127.0.0.1")
    client = app.test_client()
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    outside = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert outside.status_code == 403
    inside = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert inside.status_code == 200


def test_a_forwarded_address_opens_nothing_without_trusted_proxies(
    production_app: AppFactory,
) -> None:
    app = production_app(METRICS_ALLOWED_NETWORKS="10.0.0.0/8")
    forged = app.test_client().get(
        "/metrics",
        headers={"X-Forwarded-For": "10.0.0.1"},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert forged.status_code == 403


# --- Logging setup -------------------------------------------------------------


def test_configuring_twice_keeps_one_handler_and_others_handlers() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        logs.configure_logging("INFO", "json")
        logs.configure_logging("WARNING", "console")
        ours = [h for h in root.handlers if isinstance(h, logs.StderrHandler)]
        assert len(ours) == 1
        assert foreign in root.handlers
        assert root.level == logging.WARNING
    finally:
        root.removeHandler(foreign)
        logs.configure_logging("INFO", "console")


def test_lines_outside_requests_have_no_request_fields(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    json_app.test_client().get(ITEMS)
    logged(capsys)
    structlog.contextvars.clear_contextvars()
    logging.getLogger("background").warning("between requests")
    (line,) = logged(capsys)
    assert "request_id" not in line
