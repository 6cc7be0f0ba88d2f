"""The benchmark's apps, its reading of wrk and of the server logs, its load
generators and figures, and that `make bench` and `make profile` run (they
print figures: none is checked)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import apps, backpressure, limits, profiling
from benchmarks.openloop import (
    LoadRun,
    Outcome,
    closed_loop,
    get_request,
    open_loop,
    percentile,
)
from benchmarks.run import (
    PROC,
    WrkRun,
    children_cpu_seconds,
    p99,
    parse_wrk,
    print_goodput,
    request_lines,
)

from conftest import PROJECT, close_connections, needs_service

# The benchmarks start their own servers, on SQLite files of their own.
pytestmark = pytest.mark.standalone

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


needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="needs wrk: the benchmark drives Gunicorn"
)


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_UPSTREAM_WAIT", "0")
    monkeypatch.setenv("APP_ENV", "testing")


def bench_command(*arguments: str) -> subprocess.CompletedProcess[str]:
    """A benchmark module run from the project, as make runs it."""
    return subprocess.run(  # noqa: S603 - a fixed command line
        [sys.executable, "-m", *arguments],
        cwd=PROJECT,
        env={k: v for k, v in os.environ.items() if not k.startswith("BENCH_")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


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


def test_the_unobserved_stack_is_the_stack_without_request_hooks() -> None:
    observed, unobserved = apps.stack(), apps.unobserved()
    try:
        with_hooks = observed.test_client().get(apps.CONSTANT)
        without = unobserved.test_client().get(apps.CONSTANT)
    finally:
        close_connections(observed)
        close_connections(unobserved)
    assert with_hooks.get_data() == without.get_data() == apps.BODY
    assert "X-Request-ID" in with_hooks.headers
    assert "X-Request-ID" not in without.headers
    assert without.headers["X-Content-Type-Options"] == "nosniff"


def test_the_unlimited_stack_counts_no_request() -> None:
    limited, unlimited = apps.stack(), apps.unlimited()
    limited.config["RATE_LIMITS_ENABLED"] = True
    try:
        counted = limited.test_client().get(apps.CONSTANT)
        uncounted = unlimited.test_client().get(apps.CONSTANT)
    finally:
        close_connections(limited)
        close_connections(unlimited)
    assert counted.headers["RateLimit-Remaining"] == "299"
    assert uncounted.get_data() == apps.BODY
    assert "RateLimit-Remaining" not in uncounted.headers


@pytest.mark.parametrize(
    ("admitted", "refused", "false", "figures"),
    [
        (990, 110, 0, "over-admission 0, under-admission 0 (0.0% of the window)"),
        (995, 105, 3, "over-admission 5, under-admission 0 (0.0% of the window)"),
        (900, 200, 0, "over-admission 0, under-admission 90 (9.0% of the window)"),
    ],
)
def test_admission_is_read_against_what_the_window_allowed(
    capsys: pytest.CaptureFixture[str],
    admitted: int,
    refused: int,
    false: int,
    figures: str,
) -> None:
    # Ten requests were counted before the burst: 990 were left to admit.
    limits.Admission(16, 10, admitted, refused, false, 0).print()
    line = capsys.readouterr().out
    assert f"16 workers: {admitted} admitted of 990 allowed" in line
    assert figures in line
    assert line.rstrip().endswith(f"RateLimit-Remaining false in {false}")


@needs_wrk
@needs_service(
    available=bool(os.environ.get("TEST_REDIS_URL")),
    reason="needs TEST_REDIS_URL: the limits benchmark counts in Redis",
)
def test_the_limits_benchmark_runs_end_to_end() -> None:
    """Only the shape is checked: every figure is printed."""
    result = bench_command(
        *("benchmarks.limits", "--seconds=1", "--warmup=0", "--rounds=1"),
        *("--workers", "2", f"--redis-url={os.environ['TEST_REDIS_URL']}"),
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert re.search(r"counting in Redis costs CPU [-+]\d+ us/req", output), output
    assert re.search(r"alone, one thread, Redis, one window: \d+ us", output), output
    assert re.search(r" 2 workers: \d+ admitted of \d+ allowed", output), output


def test_request_lines_are_counted_in_a_server_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        '{"event": "request", "status": 200}\n'
        '{"event": "Booting worker with pid: 7"}\n'
        "a line that is not JSON\n"
        '["event", "request"]\n'
        '{"event": "request", "status": 503}\n'
    )
    assert request_lines(log) == 2


@pytest.mark.skipif(not PROC.is_dir(), reason="reads /proc (Linux)")
def test_the_cpu_time_of_child_processes_is_read() -> None:
    burn = "import time\nwhile time.process_time() < 0.3: pass\nprint(flush=True)\n"
    with subprocess.Popen(  # noqa: S603 - a fixed command line
        [sys.executable, "-c", burn + "time.sleep(60)"], stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None
            child.stdout.readline()  # it has used 0.3 s of CPU
            used = children_cpu_seconds(os.getpid())
        finally:
            child.kill()
    assert used is not None
    assert used >= 0.25  # clock ticks are 10 ms; other children only add


def test_wrk_output_is_read() -> None:
    run = parse_wrk(WRK_OUTPUT)
    assert run == WrkRun(rate=2700.5, p99_ms=0.812, errors=12, requests=27000)


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
    print_goodput("label", LoadRun(started=0.0, seconds=2.0, outcomes=outcomes))
    line = capsys.readouterr().out
    assert "goodput    1.0 req/s" in line
    assert "shed  25%" in line
    assert "failed or timed out 1" in line
    assert p99([5.0]) == 5.0


@needs_wrk
def test_the_benchmark_runs_end_to_end() -> None:
    """Only the shape is checked: the stack logs each request, the others none."""
    result = bench_command(
        *("benchmarks.run", "--seconds=1", "--warmup=0", "--rounds=1"),
        *("--skip-redis", "--skip-goodput", "--skip-backpressure"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    labels = [line[9:25].strip() for line in lines if line.startswith("memory ")]
    assert labels == ["bare", "stack", "stack unobserved", "stack quiet"]
    written = re.search(r"the stack wrote (\d+) request lines", result.stdout)
    assert written, result.stdout
    assert int(written.group(1)) > 0
    assert result.stdout.count("(0 request lines)") == 2, result.stdout


def py_spy_refusal() -> str | None:
    """Why py-spy cannot attach to a process beside it here, or None."""
    if profiling.PY_SPY is None:
        return "py-spy is not installed"
    with subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    ) as target:
        try:
            assert target.stdout is not None
            target.stdout.readline()  # the interpreter is up
            dump = subprocess.run(  # noqa: S603 - a fixed command line
                [profiling.PY_SPY, "dump", "--pid", str(target.pid)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            target.kill()
    if dump.returncode == 0:
        return None
    said = (dump.stderr or dump.stdout).strip().splitlines()
    return f"py-spy cannot attach here (needs ptrace): {said[-1] if said else ''}"


@needs_wrk
def test_make_profile_writes_a_flame_graph(tmp_path: Path) -> None:
    recipe = re.search(
        r"^profile:.*\n\t(.*)\n", (PROJECT / "Makefile").read_text(), re.MULTILINE
    )
    assert recipe, "the Makefile has no profile target"
    assert recipe.group(1) == "uv run python -m benchmarks.profiling"
    if refusal := py_spy_refusal():
        pytest.skip(refusal)
    output = tmp_path / "profile.svg"
    result = bench_command(
        "benchmarks.profiling", "--seconds=2", "--warmup=0", f"--output={output}"
    )
    assert result.returncode == 0, result.stderr
    assert f"Flame graph: {output}" in result.stdout
    graph = output.read_text()
    assert graph.lstrip().startswith("<?xml") or "<svg" in graph[:2000]
    # Samples of the worker's requests, not only of the idle master.
    assert "flask/app.py" in graph


def load_run(seconds: float, *groups: tuple[int, int, float]) -> LoadRun:
    """A run of `seconds` with, for each group, `count` answers of `status`
    after `latency_ms`."""
    outcomes = [
        Outcome(status, latency_ms, finished=1.0)
        for count, status, latency_ms in groups
        for _ in range(count)
    ]
    return LoadRun(started=0.0, seconds=seconds, outcomes=outcomes)


def test_the_backpressure_figures_meet_their_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = backpressure.Figures(
        unloaded=load_run(2.0, (200, 200, 2.0)),
        closed=load_run(2.0, (1000, 200, 10.0)),
        # 5 admitted answers of 955 are slow: beyond the p99.
        opened=load_run(2.0, (950, 200, 8.0), (5, 200, 1200.0), (1045, 503, 1.0)),
    )
    figures.print()
    assert capsys.readouterr().out.splitlines() == [
        "  unloaded, 1 client (closed loop, 2.0 s): 100 req/s, p99 2.00 ms",
        "  closed loop, 8 clients (2.0 s): capacity 500 req/s, p99 10.00 ms",
        "    shed 0 of 1000 (target 0): met",
        (
            "  open loop at 2 x capacity (1000 req/s offered, 2.0 s): shed 52% "
            "(p99 1.00 ms); requests sent p99 0.00 ms after due"
        ),
        (
            "    goodput 475 req/s (200 within 1 s), 95.0% of capacity "
            "(target >= 90%): met"
        ),
        (
            "    admitted p99 8.00 ms, 4.00x the unloaded p99 of 2.00 ms "
            "(target < 5x): met"
        ),
    ]


def test_the_backpressure_figures_that_miss_their_targets_say_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = backpressure.Figures(
        unloaded=load_run(1.0, (100, 200, 4.0)),
        closed=load_run(2.0, (998, 200, 20.0), (2, 503, 0.5)),
        opened=load_run(
            2.0,
            (800, 200, 30.0),
            # Admitted, but answered too late to count towards goodput.
            (200, 200, 1500.0),
            (1000, 503, 2.0),
            (10, 0, 10000.0),
            (4, 404, 3.0),
        ),
    )
    figures.print()
    assert capsys.readouterr().out.splitlines() == [
        "  unloaded, 1 client (closed loop, 1.0 s): 100 req/s, p99 4.00 ms",
        "  closed loop, 8 clients (2.0 s): capacity 499 req/s, p99 20.00 ms",
        "    shed 2 of 1000 (target 0): MISSED",
        (
            "  open loop at 2 x capacity (1007 req/s offered, 2.0 s): shed 50% "
            "(p99 2.00 ms); other answers: 10 unanswered, 4 404; "
            "requests sent p99 0.00 ms after due"
        ),
        (
            "    goodput 400 req/s (200 within 1 s), 80.2% of capacity "
            "(target >= 90%): MISSED"
        ),
        (
            "    admitted p99 1500.00 ms, 375.00x the unloaded p99 of 4.00 ms "
            "(target < 5x): MISSED"
        ),
    ]
    assert percentile([], 99) != percentile([], 99)  # nan: nothing to read


class StubServer:
    """HTTP on 127.0.0.1 answering each request with the next of `statuses`,
    counting the connections it was sent on."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = statuses
        self.answered = 0
        self.connections = 0
        self.heads: list[bytes] = []

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                status = self.statuses[self.answered % len(self.statuses)]
                self.answered += 1
                close = b"connection: close" in head.lower()
                writer.write(
                    f"HTTP/1.1 {status} Stub\r\nContent-Length: 2\r\n".encode()
                    + (b"Connection: close\r\n" if close else b"")
                    + b"\r\n{}"
                )
                await writer.drain()
                if close:
                    break
        except asyncio.IncompleteReadError:
            pass  # the client closed the connection
        finally:
            writer.close()


def test_the_load_generators_read_every_answer_on_kept_alive_connections() -> None:
    stub = StubServer(200, 503)

    async def scenario() -> tuple[LoadRun, int, LoadRun, int, LoadRun, int]:
        server = await asyncio.start_server(stub.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            closed = await closed_loop(port, get_request("/x"), 2, 0.2)
            after_closed = stub.connections
            opened = await open_loop(port, get_request("/x"), 100, 0.3)
            after_open = stub.connections
            request = get_request("/x", keep_alive=False)
            fresh = await open_loop(port, request, 50, 0.2)
        return closed, after_closed, opened, after_open, fresh, stub.connections

    closed, after_closed, opened, after_open, fresh, after_fresh = asyncio.run(
        scenario()
    )
    # The closed loop: each client on one connection, sending until the end.
    assert after_closed == 2
    assert len(closed.outcomes) > 2
    assert {o.status for o in closed.outcomes} == {200, 503}
    assert closed.seconds >= 0.2
    # The open loop: every request due is sent and answered, mostly on
    # connections opened before.
    assert len(opened.outcomes) == 30
    assert opened.failed() == 0
    assert len(opened.answered(200)) + len(opened.answered(503)) == 30
    assert all(o.latency_ms >= o.late_ms >= 0 for o in opened.outcomes)
    assert after_open - after_closed < 30
    # Without keep-alive, a connection per request.
    assert len(fresh.outcomes) == after_fresh - after_open == 10
    assert stub.answered == len(closed.outcomes) + 40


def test_the_load_generators_send_several_requests_each_in_turn() -> None:
    stub = StubServer(200)
    addresses = [f"198.51.100.{number}" for number in (1, 2, 3)]
    requests = [
        get_request("/x", headers={"X-Forwarded-For": address}) for address in addresses
    ]

    async def scenario() -> tuple[LoadRun, LoadRun]:
        server = await asyncio.start_server(stub.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            closed = await closed_loop(port, requests, 2, 0.2)
            opened = await open_loop(port, requests, 60, 0.1)
        return closed, opened

    closed, opened = asyncio.run(scenario())
    assert requests[0] == (
        b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n"
    )
    sent = [head.decode() for head in stub.heads]
    # The closed loop's two clients: the first and the second address only.
    from_closed = {head.split("X-Forwarded-For: ")[1][:12] for head in sent[:-6]}
    assert from_closed == {"198.51.100.1", "198.51.100.2"}
    assert len(closed.outcomes) == len(sent) - 6
    # The open loop's six requests: each address in turn, twice.
    from_open = sorted(head.split("X-Forwarded-For: ")[1][:12] for head in sent[-6:])
    assert from_open == sorted(addresses * 2)
    assert opened.failed() == 0


def test_the_backpressure_benchmark_runs_end_to_end() -> None:
    """Only the shape is checked: every figure is printed beside its target."""
    result = bench_command(
        "benchmarks.backpressure", "--seconds=1", "--warmup=0", "--unloaded-seconds=1"
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout
    figure = r"[\d.]+"
    verdict = r"(met|MISSED)"
    for shape in (
        (
            rf"unloaded, 1 client \(closed loop, {figure} s\): \d+ req/s, "
            rf"p99 {figure} ms"
        ),
        (
            rf"closed loop, 8 clients \({figure} s\): capacity \d+ req/s, "
            rf"p99 {figure} ms"
        ),
        rf"shed \d+ of \d+ \(target 0\): {verdict}",
        rf"open loop at 2 x capacity \(\d+ req/s offered, {figure} s\): shed \d+%",
        (
            rf"goodput \d+ req/s \(200 within 1 s\), {figure}% of capacity "
            rf"\(target >= 90%\): {verdict}"
        ),
        (
            rf"admitted p99 {figure} ms, {figure}x the unloaded p99 of {figure} ms "
            rf"\(target < 5x\): {verdict}"
        ),
    ):
        assert re.search(shape, output), (shape, output)
