"""The benchmark's apps and its reading of wrk (`make bench` itself prints figures)."""

from __future__ import annotations

import pytest

from benchmarks import apps
from benchmarks.run import OpenLoopRun, Outcome, p99, parse_wrk, print_goodput

from conftest import close_connections

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8000/bench/constant
  1 threads and 3 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%    1.02ms
     75%    1.20ms
     90%    1.50ms
     99%  812.00us
  27000 requests in 10.00s, 4.50MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   2700.50
Transfer/sec:    460.00KB
"""


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_UPSTREAM_WAIT", "0")
    monkeypatch.setenv("APP_ENV", "testing")


@pytest.mark.parametrize("path", [apps.CONSTANT, apps.SLOW])
def test_both_apps_answer_the_same_bytes(path: str) -> None:
    stack = apps.stack()
    try:
        bare_answer = apps.bare().test_client().get(path)
        stack_answer = stack.test_client().get(path)
    finally:
        close_connections(stack)
    assert bare_answer.status_code == stack_answer.status_code == 200
    assert bare_answer.get_data() == stack_answer.get_data() == apps.BODY
    assert bare_answer.mimetype == stack_answer.mimetype == "application/json"


def test_the_stack_view_goes_through_every_layer() -> None:
    stack = apps.stack()
    stack.config["RATE_LIMITS_ENABLED"] = True
    try:
        answer = stack.test_client().get(apps.CONSTANT)
    finally:
        close_connections(stack)
    assert answer.headers["RateLimit-Limit"] == "300"  # protected("read")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_wrk_output_is_read() -> None:
    run = parse_wrk(WRK_OUTPUT)
    assert (run.rate, run.p99_ms, run.errors) == (2700.5, 0.812, 12)


def test_unreadable_wrk_output_stops_the_benchmark() -> None:
    with pytest.raises(SystemExit, match="could not read wrk's output"):
        parse_wrk("wrk: connection refused")


def test_goodput_counts_successes_until_the_last_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcomes = [
        Outcome(200, 60.0, finished=1.0),
        Outcome(200, 80.0, finished=2.0),
        Outcome(503, 2.0, finished=1.5),
        Outcome(0, 15000.0, finished=2.0),
    ]
    print_goodput("label", OpenLoopRun(started=0.0, outcomes=outcomes))
    line = capsys.readouterr().out
    assert "goodput    1.0 req/s" in line
    assert "shed  25%" in line
    assert "failed or timed out 1" in line
    assert p99([5.0]) == 5.0
