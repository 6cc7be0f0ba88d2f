"""The pricing upstream under load and failure: concurrent calls through one
breaker, one half-open trial, bounded retries and deadline, checked answers.

Every test talks to a real server on 127.0.0.1: `FakeUpstream` below (it counts
calls and how many overlap), or conftest's `hung_server`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import urllib3
from flask import Flask, Response, request_finished
from werkzeug.test import TestResponse

from {{ cookiecutter.package_name }}.extensions import cache, db
from {{ cookiecutter.package_name }}.models import Item
from {{ cookiecutter.package_name }}.resilience import breakers_of
from {{ cookiecutter.package_name }}.resilience.breakers import (
    ConcurrentBreaker,
)
from {{ cookiecutter.package_name }}.services import http as upstream_http
from {{ cookiecutter.package_name }}.services.http import (
    Upstream,
    UpstreamError,
)
from {{ cookiecutter.package_name }}.services.pricing import UpstreamPrice

from conftest import (
    AppFactory,
    FakeUpstream,
    RedisTarget,
    Reply,
    problem,
    wait_until,
)

PRICE = "/api/v1/items/1/price"
UNAVAILABLE = "The pricing service is unavailable"


@pytest.fixture(params=["memory", "redis"])
def shared(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where breaker state lives: this process's memory, or Redis
    (TEST_REDIS_URL's, else fakeredis); the settings that put it there."""
    if request.param == "memory":
        return {}
    target: RedisTarget = request.getfixturevalue("redis_target")
    return target.settings()


def priced_app(
    make_app: AppFactory,
    url: str,
    *,
    fail_max: int = 2,
    reset_timeout: float = 30,
    **overrides: Any,
) -> Flask:
    """An app with item 1, PRICING_URL=url and room for concurrent requests."""
    settings: dict[str, Any] = {
        "PRICING_URL": url,
        "PRICING_TIMEOUT": 2.0,
        "CIRCUIT_BREAKERS": {
            "pricing": {
                "fail_max": fail_max,
                "reset_timeout": reset_timeout,
                "exclude": ["services.http.UpstreamClientError"],
            }
        },
        "CACHE_TYPE": "SimpleCache",
        "MAX_IN_FLIGHT": 64,  # no load shedding: these tests load the breaker
        **overrides,
    }
    app = make_app(tables=True, **settings)
    with app.app_context():
        db.session.add(Item(name="Priced"))
        db.session.commit()
    return app


def breaker(app: Flask) -> ConcurrentBreaker:
    return breakers_of(app)["pricing"]


def concurrently(
    app: Flask, count: int, start: threading.Barrier | None = None
) -> list[tuple[TestResponse, float]]:
    """`count` requests for the price, released together (with the other
    parties of `start`, when given); each with its duration."""
    start = start or threading.Barrier(count)

    def one(_: int) -> tuple[TestResponse, float]:
        client = app.test_client()
        start.wait(timeout=5)
        began = time.monotonic()
        response = client.get(PRICE)
        return response, time.monotonic() - began

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count), timeout=30))


def timed_get(app: Flask) -> tuple[TestResponse, float]:
    began = time.monotonic()
    response = app.test_client().get(PRICE)
    return response, time.monotonic() - began


def trip(app: Flask, pricing_upstream: FakeUpstream, failures: int = 2) -> None:
    """Open the breaker with `failures` quick 500s."""
    pricing_upstream.queue = [Reply(status=500)] * failures
    client = app.test_client()
    for _ in range(failures):
        assert client.get(PRICE).status_code == 503
    assert breaker(app).current_state == "open"


# --- Concurrency ---------------------------------------------------------------


def test_calls_through_one_breaker_run_concurrently(
    make_app: AppFactory, pricing_upstream: FakeUpstream, shared: dict[str, Any]
) -> None:
    app = priced_app(make_app, pricing_upstream.url, **shared)
    assert app.test_client().get(PRICE).status_code == 200  # warm: lazy set-ups
    pricing_upstream.default = Reply(delay=1.0)
    began = time.monotonic()
    answers = concurrently(app, 8)
    took = time.monotonic() - began
    assert [response.status_code for response, _ in answers] == [200] * 8
    # One at a time would take 8 x 1 s; side by side, about 1 s. The margins
    # leave room for a loaded machine that starts some threads late.
    assert took < 4.0, took
    assert pricing_upstream.calls == 1 + 8
    assert pricing_upstream.peak >= 4, pricing_upstream.peak
    assert (breaker(app).current_state, breaker(app).fail_counter) == ("closed", 0)


def test_concurrent_failures_are_each_counted(
    make_app: AppFactory, pricing_upstream: FakeUpstream, shared: dict[str, Any]
) -> None:
    pricing_upstream.default = Reply(status=500, delay=0.2)
    app = priced_app(make_app, pricing_upstream.url, fail_max=5, **shared)
    answers = concurrently(app, 4)
    assert {response.status_code for response, _ in answers} == {503}
    assert (breaker(app).current_state, breaker(app).fail_counter) == ("closed", 4)
    assert app.test_client().get(PRICE).status_code == 503  # the fifth in a row
    assert breaker(app).current_state == "open"


@pytest.mark.parametrize(
    ("trial_status", "after"), [(200, "closed"), (500, "open")], ids=["good", "bad"]
)
def test_a_half_open_breaker_lets_exactly_one_trial_through(
    make_app: AppFactory,
    pricing_upstream: FakeUpstream,
    shared: dict[str, Any],
    trial_status: int,
    after: str,
) -> None:
    app = priced_app(make_app, pricing_upstream.url, reset_timeout=0.3, **shared)
    trip(app, pricing_upstream)
    time.sleep(0.35)  # reset_timeout is over: the next call is the trial
    calls = pricing_upstream.calls
    # The trial takes 1.2 s (within PRICING_TIMEOUT); the others are refused
    # at once: the trial is still running when each refusal is answered
    # (observed as each request finishes, where timings alone would read a
    # busy machine's slowness as waiting for the trial).
    pricing_upstream.default = Reply(status=trial_status, delay=1.2)
    finished: list[tuple[int, bool]] = []

    def note(_sender: Flask, response: Response, **_extra: Any) -> None:
        finished.append((response.status_code, breaker(app).trial_running))

    with request_finished.connected_to(note, app):
        answers = concurrently(app, 8)
    assert pricing_upstream.calls == calls + 1, "exactly one trial may reach it"
    trial = 200 if trial_status == 200 else 503
    assert sorted(finished) == sorted([(trial, False)] + [(503, True)] * 7), finished
    for response, _ in answers:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert response.json is not None
            detail = response.json["detail"]
            assert "pricing service is unavailable; try again" in detail
    assert breaker(app).current_state == after
    assert not breaker(app).trial_running


def test_with_redis_each_worker_process_runs_at_most_one_trial(
    make_app: AppFactory, pricing_upstream: FakeUpstream, redis_target: RedisTarget
) -> None:
    # Two apps on one Redis stand for two Gunicorn workers: the documented
    # limit is one trial per process, so at most two calls reach the upstream.
    workers = [
        priced_app(
            make_app, pricing_upstream.url, reset_timeout=1.0, **redis_target.settings()
        )
        for _ in range(2)
    ]
    trip(workers[0], pricing_upstream)
    # The second sees the open breaker (and has done its lazy set-ups, which
    # would hold its requests back while the first's trial ends). The reset
    # timeout leaves a loaded machine a second for those set-ups: at 0.3 s the
    # breaker was once half-open before the second worker's first request.
    assert workers[1].test_client().get(PRICE).status_code == 503
    time.sleep(1.05)
    calls = pricing_upstream.calls
    pricing_upstream.default = Reply(delay=1.2)
    # All eight released together: a trial that ended before the other
    # worker's requests even started would let them through, closed.
    start = threading.Barrier(8)
    with ThreadPoolExecutor(max_workers=2) as pool:
        per_worker = list(
            pool.map(lambda app: concurrently(app, 4, start), workers, timeout=30)
        )
    for answers in per_worker:
        assert sorted(response.status_code for response, _ in answers) == [
            200,
            503,
            503,
            503,
        ]
    assert pricing_upstream.calls == calls + 2
    assert breaker(workers[0]).current_state == "closed"


def test_an_answer_from_before_the_breaker_opened_is_not_counted(
    make_app: AppFactory, pricing_upstream: FakeUpstream
) -> None:
    app = priced_app(make_app, pricing_upstream.url, reset_timeout=0.3)
    # Out while everything else happens.
    pricing_upstream.queue = [Reply(status=500, delay=1.0)]
    late: list[TestResponse] = []
    slow = threading.Thread(target=lambda: late.append(app.test_client().get(PRICE)))
    slow.start()
    try:
        wait_until(lambda: pricing_upstream.calls == 1)
        trip(app, pricing_upstream)
        time.sleep(0.35)
        assert app.test_client().get(PRICE).status_code == 200  # the trial: closed
    finally:
        slow.join(timeout=5)
    # It failed, after the trial fetched a price: that price, marked stale.
    assert late[0].status_code == 200
    assert late[0].json is not None
    assert late[0].json["stale"] is True
    # The slow failure was let in under the old closed state: it says nothing
    # about the upstream now, so it neither counts nor reopens the breaker.
    assert (breaker(app).current_state, breaker(app).fail_counter) == ("closed", 0)


# --- Retries and the deadline --------------------------------------------------


def test_a_read_timeout_is_not_retried(
    make_app: AppFactory, pricing_upstream: FakeUpstream
) -> None:
    pricing_upstream.default = Reply(delay=1.0)
    app = priced_app(make_app, pricing_upstream.url, PRICING_TIMEOUT=0.3)
    response, took = timed_get(app)
    assert response.status_code == 503
    assert pricing_upstream.calls == 1
    assert took < 0.95, took  # the upstream would have taken 1 s
    assert breaker(app).fail_counter == 1


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class OnRetry(logging.Handler):
    """Keeps the retry messages; once armed, starts the upstream at the first one."""

    def __init__(self, pricing_upstream: FakeUpstream, port: int) -> None:
        super().__init__(logging.INFO)
        self.pricing_upstream, self.port = pricing_upstream, port
        self.armed = False
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.armed and not self.pricing_upstream.url:
            # Listening before the retry connects.
            self.pricing_upstream.start(self.port)


def test_a_refused_connection_is_retried(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    app = priced_app(make_app, f"http://127.0.0.1:{port}")
    later = FakeUpstream()
    retries = OnRetry(later, port)
    logger = logging.getLogger(upstream_http.__name__)
    caplog.set_level(logging.INFO, logger=upstream_http.__name__)
    logger.addHandler(retries)
    try:
        response, took = timed_get(app)
        assert response.status_code == 503
        assert len(retries.messages) == 2  # both retries, then it gave up
        assert all("NewConnectionError" in message for message in retries.messages)
        assert took < 1.0, took
        assert breaker(app).fail_counter == 1, "one call, one failure"

        retries.messages.clear()
        retries.armed = True  # the pricing service comes up during the pause
        response = app.test_client().get(PRICE)
        assert response.status_code == 200
        assert len(retries.messages) == 1
        assert later.calls == 1
        assert breaker(app).fail_counter == 0
    finally:
        logger.removeHandler(retries)
        later.stop()


def test_the_deadline_bounds_a_hanging_upstream(
    make_app: AppFactory, pricing_upstream: FakeUpstream, hung_server: int
) -> None:
    app = priced_app(make_app, pricing_upstream.url, PRICING_TIMEOUT=0.5)
    assert app.test_client().get(PRICE).status_code == 200  # now a price is known
    app.config["PRICING_URL"] = f"http://127.0.0.1:{hung_server}"
    # The deadline (connect timeout + PRICING_TIMEOUT), and room for a busy machine.
    bound = 1.0 + 0.5 + 0.3
    response, took = timed_get(app)
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["amount"], response.json["stale"]) == ("12.50", True)
    assert 0.45 < took < bound, took
    with app.app_context():
        cache.clear()  # no price known: the answer is a 503, as quickly
    response, took = timed_get(app)
    assert response.status_code == 503
    assert took < bound, took


def test_retries_stop_at_the_deadline(
    make_app: AppFactory, pricing_upstream: FakeUpstream
) -> None:
    # Slow 503s: one retry fits in the 0.9 s deadline, a third attempt does not.
    pricing_upstream.default = Reply(status=503, delay=0.5)
    app = priced_app(make_app, pricing_upstream.url, fail_max=10)
    with app.app_context():
        pricing = Upstream(
            name="pricing",
            base_url=pricing_upstream.url,
            breaker=breaker(app),
            pool=urllib3.PoolManager(),
            read_timeout=0.8,
            connect_timeout=0.1,
        )
        assert pricing.deadline == pytest.approx(0.9)
        began = time.monotonic()
        with pytest.raises(UpstreamError):
            pricing.request_json("GET", "/prices/1", UpstreamPrice.model_validate)
        took = time.monotonic() - began
    assert pricing_upstream.calls == 2
    # Not retried as many times as 503s come (that would be about 1.7 s).
    assert 0.85 < took < 0.9 + 0.4, took


@pytest.mark.parametrize(
    "timeout", [1e20, float("inf"), float("nan"), 0.0, -1.0, "soon", None]
)
def test_a_bad_timeout_setting_is_not_a_500(
    make_app: AppFactory, pricing_upstream: FakeUpstream, timeout: Any
) -> None:
    app = priced_app(make_app, pricing_upstream.url, PRICING_TIMEOUT=timeout)
    assert app.test_client().get(PRICE).status_code == 200
    assert breaker(app).fail_counter == 0
    with app.app_context():
        pricing = upstream_http.upstream("pricing", pricing_upstream.url, timeout)
    assert 0 < pricing.read_timeout <= upstream_http.LONGEST_TIMEOUT


# --- Checked answers -----------------------------------------------------------

INVALID = {
    "huge amount": b'{"amount": "1e999999999", "currency": "EUR"}',
    "amount of 10^12": b'{"amount": "1000000000000", "currency": "EUR"}',
    "NaN string": b'{"amount": "NaN", "currency": "EUR"}',
    "NaN number": b'{"amount": NaN, "currency": "EUR"}',
    "infinity": b'{"amount": Infinity, "currency": "EUR"}',
    "negative": b'{"amount": "-1.00", "currency": "EUR"}',
    "number, not string": b'{"amount": 12.5, "currency": "EUR"}',
    "five decimals": b'{"amount": "12.50001", "currency": "EUR"}',
    "trailing newline": b'{"amount": "12.50\\n", "currency": "EUR"}',
    "non-ASCII digits": '{"amount": "\u0661\u0662", "currency": "EUR"}'.encode(),
    "right-to-left override": b'{"amount": "12.50", "currency": "\\u202eRUE"}',
    "lower case currency": b'{"amount": "12.50", "currency": "eur"}',
    "currency and newline": b'{"amount": "12.50", "currency": "EUR\\n"}',
    "no currency": b'{"amount": "12.50"}',
    "a list": b"[]",
    "not JSON": b"<html>Bad gateway</html>",
    "not UTF-8": b'{"amount": "\xff"}',
    "nested too deep": b"[" * 100_000,
}


@pytest.mark.parametrize("body", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_answer_is_a_failure(
    make_app: AppFactory, pricing_upstream: FakeUpstream, body: bytes
) -> None:
    app = priced_app(make_app, pricing_upstream.url, fail_max=3)
    client = app.test_client()
    pricing_upstream.default = Reply(body=body)
    # No price known yet: 503, and counted like a 5xx.
    refused = client.get(PRICE)
    assert refused.status_code == 503
    assert refused.json is not None
    assert UNAVAILABLE in refused.json["detail"]
    assert breaker(app).fail_counter == 1
    pricing_upstream.default = Reply()
    assert client.get(PRICE).status_code == 200
    assert breaker(app).fail_counter == 0
    # Now a price is known: the invalid answer is neither served nor remembered.
    pricing_upstream.default = Reply(body=body)
    for expected_failures in (1, 2):
        stale = client.get(PRICE)
        assert stale.status_code == 200
        assert stale.json is not None
        assert (stale.json["amount"], stale.json["currency"]) == ("12.50", "EUR")
        assert stale.json["stale"] is True
        assert breaker(app).fail_counter == expected_failures
    client.get(PRICE)
    assert breaker(app).current_state == "open"


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("0", "JPY"), ("12", "EUR"), ("0.5", "USD"), ("999999999999.9999", "CLF")],
)
def test_valid_prices_are_served_as_given(
    make_app: AppFactory, pricing_upstream: FakeUpstream, amount: str, currency: str
) -> None:
    pricing_upstream.default = Reply(
        body=json.dumps({"amount": amount, "currency": currency}).encode()
    )
    response = priced_app(make_app, pricing_upstream.url).test_client().get(PRICE)
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["amount"], response.json["currency"]) == (amount, currency)


@pytest.mark.parametrize("status", [400, 404, 409, 429])
def test_4xx_answers_do_not_count_even_concurrently_with_bad_bodies(
    make_app: AppFactory, pricing_upstream: FakeUpstream, status: int
) -> None:
    # The status decides before the body is read: a 4xx with garbage is still
    # "the request was wrong", not an outage.
    pricing_upstream.default = Reply(
        status=status, body=b"<html>nope</html>", delay=0.1
    )
    app = priced_app(make_app, pricing_upstream.url, fail_max=2)
    answers = concurrently(app, 6)
    assert {response.status_code for response, _ in answers} == {503}
    assert pricing_upstream.calls == 6
    assert (breaker(app).current_state, breaker(app).fail_counter) == ("closed", 0)


# --- The example upstream, one call at a time ------------------------------------


@pytest.fixture
def pricing_app(make_app: AppFactory, pricing_upstream: FakeUpstream) -> Flask:
    """An app whose pricing breaker opens after 2 failures, for 1 second."""
    app = make_app(
        PRICING_URL=pricing_upstream.url,
        PRICING_TIMEOUT=0.5,
        CIRCUIT_BREAKERS={
            "pricing": {
                "fail_max": 2,
                "reset_timeout": 1,
                "exclude": ["services.http.UpstreamClientError"],
            }
        },
        CACHE_TYPE="SimpleCache",
        tables=True,
    )
    with app.app_context():
        db.session.add(Item(name="Priced"))
        db.session.commit()
    return app


def test_a_price_comes_from_the_upstream(
    pricing_app: Flask, pricing_upstream: FakeUpstream
) -> None:
    response = pricing_app.test_client().get(PRICE)
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["amount"], response.json["currency"]) == ("12.50", "EUR")
    assert response.json["stale"] is False
    assert pricing_upstream.calls == 1


def test_an_open_breaker_answers_at_once_without_the_upstream(
    pricing_app: Flask, pricing_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    client = pricing_app.test_client()
    pricing_upstream.default = Reply(status=500)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            problem(client.get(PRICE), 503)
    # A 500 is not retried (only 502-504 are): 2 calls, 2 failures, open.
    assert pricing_upstream.calls == 2
    assert "circuit breaker pricing: closed -> open" in caplog.text

    refused = client.get(PRICE)
    body = problem(refused, 503)
    assert "pricing service is unavailable" in body["detail"]
    assert refused.headers["Retry-After"] == "1"
    assert pricing_upstream.calls == 2, "an open breaker must not call upstream"

    report = client.get("/health/dependencies").json
    assert report == {
        "status": "warn",
        "dependencies": {"pricing": {"state": "open", "failures": 2, "retry_after": 1}},
    }


def test_the_breaker_half_opens_and_closes_after_a_good_trial(
    pricing_app: Flask, pricing_upstream: FakeUpstream
) -> None:
    client = pricing_app.test_client()
    pricing_upstream.default = Reply(status=503)
    for _ in range(2):
        client.get(PRICE)
    assert client.get(PRICE).status_code == 503
    pricing_upstream.default = Reply()
    time.sleep(1.1)  # reset_timeout: the next call is the trial
    assert client.get(PRICE).status_code == 200
    with pricing_app.app_context():
        assert breakers_of()["pricing"].current_state == "closed"


def test_the_upstreams_4xx_is_not_an_outage(
    pricing_app: Flask, pricing_upstream: FakeUpstream
) -> None:
    client = pricing_app.test_client()
    pricing_upstream.default = Reply(status=404)
    for _ in range(4):
        problem(client.get(PRICE), 503)
    with pricing_app.app_context():
        breaker = breakers_of()["pricing"]
        assert (breaker.current_state, breaker.fail_counter) == ("closed", 0)


def test_a_failing_upstream_serves_the_last_known_price(
    pricing_app: Flask, pricing_upstream: FakeUpstream
) -> None:
    client = pricing_app.test_client()
    assert client.get(PRICE).status_code == 200
    pricing_upstream.default = Reply(delay=1.0)  # longer than PRICING_TIMEOUT
    response = client.get(PRICE)
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["amount"], response.json["stale"]) == ("12.50", True)


def test_an_open_breaker_still_serves_the_last_known_price(
    pricing_app: Flask, pricing_upstream: FakeUpstream
) -> None:
    client = pricing_app.test_client()
    assert client.get(PRICE).status_code == 200
    pricing_upstream.default = Reply(status=500)
    for _ in range(2):  # fail_max: each failure is answered from the cache
        assert client.get(PRICE).json["stale"] is True  # type: ignore[index]
    with pricing_app.app_context():
        assert breakers_of()["pricing"].current_state == "open"
    calls = pricing_upstream.calls
    response = client.get(PRICE)
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["amount"], response.json["stale"]) == ("12.50", True)
    assert pricing_upstream.calls == calls, "an open breaker must not call upstream"


def test_transient_upstream_errors_are_retried(
    pricing_app: Flask, pricing_upstream: FakeUpstream
) -> None:
    pricing_upstream.queue = [Reply(status=503), Reply(status=502)]
    response = pricing_app.test_client().get(PRICE)
    assert response.status_code == 200
    assert pricing_upstream.calls == 3


def test_an_unknown_item_has_no_price(pricing_app: Flask) -> None:
    problem(pricing_app.test_client().get("/api/v1/items/99/price"), 404)


def test_without_a_pricing_service_prices_are_unavailable(
    make_app: AppFactory,
) -> None:
    app = make_app(tables=True)
    with app.app_context():
        db.session.add(Item(name="Unpriced"))
        db.session.commit()
    body = problem(app.test_client().get(PRICE), 503)
    assert "PRICING_URL" in body["detail"]
