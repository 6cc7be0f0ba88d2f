"""The production server: Gunicorn with gunicorn.conf.py, started as a user would.

Every server here binds to 127.0.0.1, answers within bounded time, and is
stopped by the test that started it.
"""

from __future__ import annotations

import http
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    PASSWORD,
    PRODUCTION_EXTRAS,
    PROJECT,
    FakeUpstream,
    Reply,
    needs_service,
    signing_key_pem,
    wait_until,
)

# Each test starts its own server on SQLite files of its own; those that share
# TEST_REDIS_URL's Redis between workers are marked `services` too.
pytestmark = pytest.mark.standalone

PACKAGE = "{{ cookiecutter.package_name }}"
SAFE_SECRET = "k" * 8 + "3vQ9-xT_4mWz7Lr2Pb6Yc1Nd8Hs5Jf0Ga"
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0
SERVER = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(port: int, **variables: str) -> dict[str, str]:
    """The production environment, minus what the test leaves out, on `port`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FLASK_", "APP_", "GUNICORN_", "JWT_", "OTEL_"))
        and name
        not in {
            "SECRET_KEY",
            "DATABASE_URL",
            "WEB_CONCURRENCY",
            "PORT",
            "REDIS_URL",
            "TRUSTED_PROXIES",
            "FORWARDED_ALLOW_IPS",
        }
    }
    env.update(
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        APP_ENV="production",
        JWT_PRIVATE_KEY=signing_key_pem(),
    )
    env.update(PRODUCTION_EXTRAS)
    if "REDIS_URL" in variables:  # with Redis, Celery's broker is Redis
        env.pop("CELERY_BROKER_URL", None)
    env.update(variables)
    return env


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    # Its stderr: a file, not a pipe, which a chatty server would fill and block on.
    log: Path

    def output(self) -> str:
        """What the server has written to stderr so far."""
        return self.log.read_text()

    def lines(self) -> list[dict[str, Any]]:
        """Its log lines, each a JSON object (production's format)."""
        return [json.loads(line) for line in self.output().splitlines() if line]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> Answer:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
        )
        payload = body or b""
        try:
            connection.putrequest(method, path)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            if chunked:
                connection.putheader("Transfer-Encoding", "chunked")
            elif body is not None:
                connection.putheader("Content-Length", str(len(payload)))
            connection.endheaders()
            try:
                for offset in range(0, len(payload), 65536):
                    chunk = payload[offset : offset + 65536]
                    connection.send(
                        b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                    )
                if chunked:
                    connection.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                # The server answered (413) and closed before the body ended.
                pass
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def stop(self) -> int:
        """SIGTERM, as an orchestrator stops a container; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL, if it still runs (a test's clean-up)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=15)


def launch(log_dir: Path, args: str = "", **variables: str) -> Server:
    """Gunicorn on a free port, answering; `args` join its command line
    (GUNICORN_CMD_ARGS), its stderr goes to a file in `log_dir`."""
    port = free_port()
    env = server_env(port, **variables)
    env["GUNICORN_CMD_ARGS"] += f" {args}"
    log = log_dir / f"gunicorn-{port}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(  # noqa: S603 - a fixed command line
            [*SERVER, "wsgi:application"],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    server = Server(process, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(server.output())
        try:
            if server.request("GET", "/health/live").status == 200:
                return server
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise AssertionError("gunicorn did not start") from None
            time.sleep(0.1)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start Gunicorn with the project's config; every server is stopped after."""
    servers: list[Server] = []

    def start(args: str = "", **variables: str) -> Server:
        servers.append(launch(tmp_path, args, **variables))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


def run_server(**variables: str) -> subprocess.CompletedProcess[str]:
    """Run Gunicorn to completion (it is expected to refuse to start)."""
    return subprocess.run(  # noqa: S603 - a fixed command line
        [*SERVER, "wsgi:application"],
        cwd=PROJECT,
        env=server_env(free_port(), **variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def operated_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A SQLite file migrated with `flask db upgrade`, and an operator's account
    and API key made with the CLI, as a deployment would: the file and the key.

    Made once (each command starts the app); each test gets a copy.
    """
    path = tmp_path_factory.mktemp("operated") / "production.db"
    env = server_env(0, SECRET_KEY=SAFE_SECRET, DATABASE_URL=f"sqlite:///{path}") | {
        "FLASK_APP": PACKAGE,
        "FLASK_SKIP_DOTENV": "1",
    }
    commands = (
        ["db", "upgrade"],
        ["create-user", "--email", "ops@example.com", "--password", PASSWORD],
        [
            "create-api-key",
            "--email=ops@example.com",
            "--name=tests",
            "--scope=read",
            "--scope=write",
        ],
    )
    results = [
        subprocess.run(  # noqa: S603 - a fixed command line
            [sys.executable, "-m", "flask", *command],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for command in commands
    ]
    return path, results[-1].stdout.strip()


@pytest.fixture
def production_database(operated_database: tuple[Path, str], tmp_path: Path) -> str:
    """This test's copy of the operated database, as a URL."""
    path = tmp_path / "production.db"
    shutil.copyfile(operated_database[0], path)
    return f"sqlite:///{path}"


@pytest.fixture
def writer(operated_database: tuple[Path, str]) -> dict[str, str]:
    """Headers of the operator's API key (in every copy of the database)."""
    return {"Content-Type": "application/json", "X-API-Key": operated_database[1]}


def test_the_config_passes_gunicorns_own_check(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603 - a fixed command line
        [*SERVER, "--check-config", "wsgi:application"],
        cwd=PROJECT,
        env=server_env(0, SECRET_KEY=SAFE_SECRET, DATABASE_URL="sqlite://")
        | {"TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # No server started: no metrics directory was made.
    assert list(tmp_path.iterdir()) == []


def resolved_settings(**variables: str) -> dict[str, str]:
    """Gunicorn's settings as gunicorn.conf.py resolves them (--print-config),
    from the production environment and `variables` alone."""
    env = server_env(0, SECRET_KEY=SAFE_SECRET, DATABASE_URL="sqlite://")
    del env["GUNICORN_CMD_ARGS"], env["WEB_CONCURRENCY"]
    result = subprocess.run(  # noqa: S603 - a fixed command line
        [*SERVER, "--print-config", "wsgi:application"],
        cwd=PROJECT,
        env=env | variables,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pairs = (line.partition(" = ") for line in result.stdout.splitlines())
    return {name.strip(): value for name, _, value in pairs}


def test_by_default_one_gthread_worker_trusts_no_forwarder() -> None:
    settings = resolved_settings()
    assert settings["bind"] == "['0.0.0.0:8000']"
    # Gunicorn's gthread worker, timing each request's wait for a thread.
    # (gunicorn.conf.py names the class itself, which --print-config shows as
    # an instance: `<QueueTimedWorker()>`.)
    assert "QueueTimedWorker" in settings["worker_class"]
    assert settings["threads"] == "4"
    # Process memory holds the limits and breakers: one worker, whatever the CPUs.
    assert settings["workers"] == "1"
    # Not Gunicorn's default (127.0.0.1, ::1): TRUSTED_PROXIES=0 trusts no one.
    assert settings["forwarded_allow_ips"] == "[]"
    assert int(settings["max_requests_jitter"]) > 0


def test_with_redis_the_default_is_a_worker_per_cpu() -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # read, never connected to
    settings = resolved_settings(REDIS_URL=redis_url)
    assert settings["workers"] == str(os.cpu_count())


def test_the_environment_sets_port_workers_threads_and_forwarders() -> None:
    settings = resolved_settings(
        PORT="9001",
        WEB_CONCURRENCY="3",
        GUNICORN_THREADS="8",
        FORWARDED_ALLOW_IPS="10.0.0.0/8,192.168.1.7",
    )
    assert settings["bind"] == "['0.0.0.0:9001']"
    assert (settings["workers"], settings["threads"]) == ("3", "8")
    assert settings["forwarded_allow_ips"] == "['10.0.0.0/8', '192.168.1.7']"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {
                "DATABASE_URL": "sqlite://",
                "SECRET_KEY": "this-is-my-super-secret-production-key",
            },
            "Error: SECRET_KEY is made of common words",
        ),
        (
            {"SECRET_KEY": SAFE_SECRET, "DATABASE_URL": "not a url"},
            "Error: DATABASE_URL is not a database URL",
        ),
        ({"PORT": "http"}, "Error: PORT='http' is not an integer"),
        (
            {
                "SECRET_KEY": SAFE_SECRET,
                "DATABASE_URL": "sqlite://",
                "WEB_CONCURRENCY": "4",
            },
            "Error: 4 workers need REDIS_URL",
        ),
        (
            {"WEB_CONCURRENCY": "100000"},
            "Error: WEB_CONCURRENCY='100000' is more than the",
        ),
        (
            {
                "SECRET_KEY": SAFE_SECRET,
                "DATABASE_URL": "sqlite://",
                "FORWARDED_ALLOW_IPS": "10.0.0.5",
            },
            "Error: FORWARDED_ALLOW_IPS=10.0.0.5 trusts proxies to report the",
        ),
        (
            {
                "SECRET_KEY": SAFE_SECRET,
                "DATABASE_URL": "sqlite://",
                "PROMETHEUS_MULTIPROC_DIR": "/proc/no-such-directory",
            },
            "Error: PROMETHEUS_MULTIPROC_DIR=/proc/no-such-directory cannot hold",
        ),
    ],
    ids=[
        "weak-secret-key",
        "bad-database-url",
        "bad-port",
        "workers-without-redis",
        "runaway-workers",
        "forwarders-without-trusted-proxies",
        "unusable-metrics-directory",
    ],
)
def test_a_refused_configuration_stops_the_server_in_one_line(
    variables: dict[str, str], message: str
) -> None:
    result = run_server(**variables)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert errors == [errors[0]]
    assert errors[0].startswith(message)
    # No traceback, and no worker was started (so none can crash in a loop).
    assert "Traceback" not in result.stderr
    assert "Booting worker" not in result.stderr


def test_liveness_answers_while_the_database_hangs(
    start_server: Any, hung_server: int
) -> None:
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=f"postgresql://app@127.0.0.1:{hung_server}/app",
        DATABASE_CONNECT_TIMEOUT="3",
        HEALTH_CHECK_TIMEOUT="0.5",
        METRICS_ALLOWED_NETWORKS="127.0.0.1/32",
    )
    answers: list[Answer] = []
    waiting = threading.Thread(
        target=lambda: answers.append(server.request("GET", "/api/v1/items"))
    )
    waiting.start()
    time.sleep(0.2)  # let the request reach the worker and block on the database
    live = server.request("GET", "/health/live")
    assert live.status == 200
    assert waiting.is_alive(), "the items request should still be waiting"

    ready = server.request("GET", "/health/ready")
    assert ready.status == 503
    assert ready.json()["checks"]["database"]["error"] == "timed out after 0.5 s"

    waiting.join(timeout=REQUEST_TIMEOUT)
    (items,) = answers
    assert items.status == 503
    assert items.headers["Content-Type"] == "application/problem+json"
    assert items.headers["Retry-After"] == "5"
    assert server.stop() == 0


def test_the_in_flight_bound_follows_the_threads_in_force(
    start_server: Any, hung_server: int
) -> None:
    # --threads on the command line, not GUNICORN_THREADS: still one thread
    # stays free, so another client's request is shed and liveness answers at
    # once. (Each client has its address, as a proxy in front says it.)
    server = start_server(
        "--threads 2",
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=f"postgresql://app@127.0.0.1:{hung_server}/app",
        DATABASE_CONNECT_TIMEOUT="5",
        TRUSTED_PROXIES="1",
    )
    waiting = threading.Thread(
        target=lambda: server.request(
            "GET", "/api/v1/items", headers={"X-Forwarded-For": "203.0.113.1"}
        )
    )
    waiting.start()
    time.sleep(0.3)  # the first request holds its slot, waiting on the database
    started = time.monotonic()
    shed = server.request(
        "GET", "/api/v1/items", headers={"X-Forwarded-For": "203.0.113.2"}
    )
    assert shed.status == 503
    assert shed.json()["detail"] == "The server is at capacity; try again in a moment."
    assert server.request("GET", "/health/live").status == 200
    assert time.monotonic() - started < 1
    waiting.join(timeout=REQUEST_TIMEOUT)
    assert server.stop() == 0


def test_a_request_that_queued_too_long_for_a_thread_is_shed(
    start_server: Any, hung_server: int
) -> None:
    # One thread, held by a request waiting on the database: the next request
    # waits for the thread in Gunicorn's pool, where the app cannot see it;
    # the worker times that wait, and the request, once a thread takes it up,
    # is shed at once rather than sent to the database too.
    server = start_server(
        "--threads 1",
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=f"postgresql://app@127.0.0.1:{hung_server}/app",
        DATABASE_CONNECT_TIMEOUT="2",
        REQUEST_QUEUE_TIMEOUT="0.5",
    )
    answers: list[Answer] = []
    waiting = threading.Thread(
        target=lambda: answers.append(server.request("GET", "/api/v1/items"))
    )
    waiting.start()
    time.sleep(0.3)  # the first request holds the thread, waiting on the database
    shed = server.request("GET", "/api/v1/items")
    waiting.join(timeout=REQUEST_TIMEOUT)
    assert shed.status == 503
    assert shed.json()["detail"] == "The server is at capacity; try again in a moment."
    assert shed.headers["Retry-After"] == "1"
    (first,) = answers
    assert (first.status, first.headers["Retry-After"]) == (503, "5")
    assert "overloaded: a request waited over 500 ms" in server.output()
    assert server.request("GET", "/health/live").status == 200
    assert server.stop() == 0


@pytest.fixture(scope="module")
def shared_server(
    operated_database: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server for the tests that only send it requests."""
    directory = tmp_path_factory.mktemp("shared")
    path = directory / "production.db"
    shutil.copyfile(operated_database[0], path)
    server = launch(directory, SECRET_KEY=SAFE_SECRET, DATABASE_URL=f"sqlite:///{path}")
    yield server
    server.kill()


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nSecret\x01Name: 1\r\n\r\n", 400),
        (b"BREW / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br\r\n\r\n", 501),
    ],
    ids=["long-url", "bad-header-name", "bad-http-version", "unknown-coding"],
)
def test_requests_gunicorn_refuses_get_problem_documents(
    shared_server: Server, request_head: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=10) as raw:
        raw.sendall(request_head)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    title = http.HTTPStatus(status).phrase
    assert head.startswith(f"HTTP/1.1 {status} {title}\r\n".encode())
    assert b"Content-Type: application/problem+json" in head
    problem = json.loads(body)
    assert (problem["status"], problem["title"]) == (status, title)
    assert problem["detail"] == "The server could not read the request."
    # An id of its own (the client's was never read), as the header says.
    assert f"X-Request-ID: {problem['request_id']}".encode() in head
    assert b"Secret" not in answer
    # The worker is still there for the next request.
    assert shared_server.request("GET", "/health/live").status == 200


def test_sigterm_lets_the_requests_in_flight_finish(
    start_server: Any,
    production_database: str,
    pricing_upstream: FakeUpstream,
    writer: dict[str, str],
) -> None:
    in_flight = 6
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
        PRICING_URL=pricing_upstream.url,
        PRICING_TIMEOUT="10",
        # A thread for each, and one left free (MAX_IN_FLIGHT): none is shed.
        GUNICORN_THREADS=str(in_flight + 1),
        # All of them come from this one address, which may hold every slot.
        MAX_IN_FLIGHT_PER_CLIENT=str(in_flight),
    )
    created = server.request("POST", "/api/v1/items", b'{"name": "Slow"}', writer)
    assert created.status == 201
    price = f"{created.headers['Location']}/price"
    pricing_upstream.default = Reply(delay=1.5)

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        answers = [pool.submit(server.request, "GET", price) for _ in range(in_flight)]
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while pricing_upstream.calls < in_flight:  # all inside views, waiting
            assert time.monotonic() < deadline, f"{pricing_upstream.calls} waiting"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        finished = [answer.result(timeout=REQUEST_TIMEOUT) for answer in answers]

    assert [answer.status for answer in finished] == [200] * in_flight
    # Fetched from the upstream, not the fallback: each ran to its end.
    assert [answer.json()["stale"] for answer in finished] == [False] * in_flight
    assert pricing_upstream.peak == in_flight
    assert server.process.wait(timeout=45) == 0
    log = server.output()
    workers = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", log)]
    assert len(workers) == 1, log
    for pid in workers:  # reaped by the master, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="needs wrk: the benchmark drives Gunicorn"
)
def test_the_worker_benchmark_runs_end_to_end() -> None:
    """`make bench-workers` prints figures; here only that it runs is checked."""
    result = subprocess.run(  # noqa: S603 - a fixed command line
        [
            *(sys.executable, "-m", "benchmarks.workers"),
            *("--workers=1", "--wide=0", "--threads", "2", "--connections=4"),
            *("--seconds=1", "--warmup=0", "--rounds=1"),
        ],
        cwd=PROJECT,
        env={k: v for k, v in os.environ.items() if not k.startswith("BENCH_")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Connections one per request" in lines
    assert "Connections kept alive" in lines
    rows = [line.split() for line in lines if line.startswith(("sync ", "gthread "))]
    # Two models, two kinds of connection; every answer a 200 (no non-2xx).
    assert [row[-1] for row in rows] == ["0"] * 4


def test_the_production_server_end_to_end(
    start_server: Any, production_database: str, writer: dict[str, str]
) -> None:
    server = start_server(SECRET_KEY=SAFE_SECRET, DATABASE_URL=production_database)
    json_headers = writer

    created = server.request(
        "POST", "/api/v1/items", b'{"name": "Widget"}', json_headers, chunked=True
    )
    assert created.status == 201
    assert created.headers["Strict-Transport-Security"].startswith("max-age=")
    assert created.headers["X-Content-Type-Options"] == "nosniff"

    limit = 1024 * 1024
    padded = b'{"name": "Padded"}' + b" " * (2 * limit)
    too_big = server.request(
        "POST", "/api/v1/items", padded, json_headers, chunked=True
    )
    assert too_big.status == 413
    assert too_big.headers["Content-Type"] == "application/problem+json"
    declared = server.request("POST", "/api/v1/items", padded, json_headers)
    assert declared.status == 413

    page = server.request("GET", "/api/v1/items").json()
    assert [item["name"] for item in page["items"]] == ["Widget"]

    deleted = server.request("DELETE", created.headers["Location"], headers=writer)
    assert deleted.status == 204
    assert "Content-Type" not in deleted.headers
    assert server.stop() == 0


# --- Several workers sharing one Redis (needs TEST_REDIS_URL) -----------------


needs_redis = needs_service(
    available=bool(os.environ.get("TEST_REDIS_URL")),
    reason="needs TEST_REDIS_URL: several workers can only share a real Redis",
)


@pytest.fixture
def redis_settings() -> Iterator[dict[str, str]]:
    """REDIS_URL and a key prefix of this test's own (its keys are removed after);
    threads and slots for every concurrent request, all of them from this one
    address, and time to wait for one on a loaded machine, so none is shed
    before it is counted."""
    settings = {
        "REDIS_URL": os.environ.get("TEST_REDIS_URL", ""),
        "REDIS_KEY_PREFIX": f"gunicorn-test-{uuid.uuid4().hex[:12]}",
        "GUNICORN_THREADS": "16",
        "MAX_IN_FLIGHT": "16",
        "MAX_IN_FLIGHT_PER_CLIENT": "16",
        "REQUEST_QUEUE_TIMEOUT": "10",
        "REQUEST_QUEUE_TARGET": "10",
    }
    yield settings
    if settings["REDIS_URL"]:
        client = redis.Redis.from_url(settings["REDIS_URL"])
        for key in client.scan_iter(f"{settings['REDIS_KEY_PREFIX']}*"):
            client.delete(key)
        client.close()


def served_by(server: Server) -> set[int]:
    """The worker processes that wrote a request line so far (read while they
    write: a last line may not be whole yet)."""
    workers = set()
    for text in server.output().splitlines(keepends=True):
        if text.endswith("\n") and '"event": "request"' in text:
            workers.add(json.loads(text)["pid"])
    return workers


def every_worker_answers(server: Server, workers: int) -> None:
    """Send requests that count against no limit under test until each of the
    `workers` has answered one (they start one by one)."""
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(max_workers=2 * workers) as pool:
        while len(served_by(server)) < workers:
            assert time.monotonic() < deadline, f"{served_by(server)} answered"
            list(pool.map(lambda _: server.request("GET", "/warm-up"), range(workers)))


@needs_redis
@pytest.mark.parametrize("workers", [4, 16])
def test_every_worker_admits_exactly_the_limit_and_says_what_is_left(
    start_server: Any,
    production_database: str,
    redis_settings: dict[str, str],
    workers: int,
) -> None:
    limit, extra = 200, 50
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
        WEB_CONCURRENCY=str(workers),
        # A day's window: no window ends while the test runs (but at midnight).
        POLICY_LIMIT_READ=f"{limit} per day",
        RATELIMIT_DEFAULT="100000 per day",
        # A loaded machine may keep a worker from Redis past production's
        # 0.5 s, which it would take for an outage (and count in memory).
        REDIS_TIMEOUT="10",
        **redis_settings,
    )
    every_worker_answers(server, workers)
    if time.time() % 86400 > 86400 - 120:
        time.sleep(86400 - time.time() % 86400 + 1)
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(
            pool.map(
                lambda _: server.request("GET", "/api/v1/items"), range(limit + extra)
            )
        )
    admitted = [answer for answer in answers if answer.status == 200]
    refused = [answer for answer in answers if answer.status == 429]
    # Not one more than the limit, and not one less.
    assert (len(admitted), len(refused)) == (limit, extra)
    # Each answer said what was left after it, whichever worker gave it.
    remaining = sorted(
        int(answer.headers["RateLimit-Remaining"]) for answer in admitted
    )
    assert remaining == list(range(limit))
    assert {answer.headers["RateLimit-Remaining"] for answer in refused} == {"0"}
    assert server.stop() == 0


@needs_redis
def test_an_open_breaker_is_open_in_every_worker(
    start_server: Any,
    production_database: str,
    redis_settings: dict[str, str],
    pricing_upstream: FakeUpstream,
    writer: dict[str, str],
) -> None:
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
        WEB_CONCURRENCY="2",
        PRICING_URL=pricing_upstream.url,
        **redis_settings,
    )
    created = server.request("POST", "/api/v1/items", b'{"name": "x"}', writer)
    assert created.status == 201
    pricing_upstream.default = Reply(status=500)
    for _ in range(5):  # fail_max
        assert server.request("GET", "/api/v1/items/1/price").status == 503
    calls = pricing_upstream.calls
    answers = [server.request("GET", "/api/v1/items/1/price") for _ in range(20)]
    assert {answer.status for answer in answers} == {503}
    assert all(int(answer.headers["Retry-After"]) > 0 for answer in answers)
    assert pricing_upstream.calls == calls, "no worker may call an open upstream"
    # Production shows the overall status only (no METRICS_ALLOWED_NETWORKS).
    report = server.request("GET", "/health/dependencies").json()
    assert report == {"status": "warn", "dependencies": None}
    assert server.stop() == 0


@needs_redis
def test_a_key_runs_once_across_workers(
    start_server: Any,
    production_database: str,
    redis_settings: dict[str, str],
    writer: dict[str, str],
) -> None:
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
        WEB_CONCURRENCY="2",
        **redis_settings,
    )
    headers = writer | {"Idempotency-Key": "across-1"}

    def post(_: int) -> Answer:
        answer: Answer = server.request(
            "POST", "/api/v1/items", b'{"name": "Once"}', headers
        )
        return answer

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(post, range(10)))
    first = [
        a for a in answers if a.status == 201 and "Idempotent-Replayed" not in a.headers
    ]
    assert len(first) == 1
    assert {a.status for a in answers} <= {201, 409}
    page = server.request("GET", "/api/v1/items").json()
    assert page["total"] == 1
    replay = post(0)
    assert (replay.status, replay.headers["Idempotent-Replayed"]) == (201, "true")
    assert replay.body == first[0].body
    assert server.stop() == 0


class OwnRedis:
    """A redis-server of this test's own on 127.0.0.1, which it may kill."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - a fixed command line
            [
                self.executable,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    client.ping()
                    return
            except redis.ConnectionError:
                assert self.process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-command, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)

    def keys(self, pattern: str) -> list[bytes]:
        with redis.Redis.from_url(self.url) as client:
            return list(client.scan_iter(pattern))


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed: this test starts and kills one")
    server = OwnRedis(executable)
    server.start()
    yield server
    server.kill()


def test_redis_dying_mid_traffic_fails_no_request(
    start_server: Any,
    production_database: str,
    own_redis: OwnRedis,
    writer: dict[str, str],
) -> None:
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
        WEB_CONCURRENCY="2",
        REDIS_URL=own_redis.url,
        GUNICORN_THREADS="4",
        POLICY_LIMIT_READ="100000 per minute",
        POLICY_LIMIT_WRITE="100000 per minute",
        # This test's client may read the probes' details.
        METRICS_ALLOWED_NETWORKS="127.0.0.1/32",
    )
    headers = writer
    served: list[int] = []
    keyed: list[Answer] = []
    number = 0

    def traffic(seconds: float) -> None:
        nonlocal number
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            number += 1
            key = {"Idempotency-Key": f"traffic-{number}"}
            served.append(server.request("GET", "/api/v1/items").status)
            # No policy: counted against the default limit, in Redis too.
            served.append(server.request("GET", "/api/openapi.json").status)
            served.append(
                server.request(
                    "POST", "/api/v1/items", b'{"name": "t"}', headers
                ).status
            )
            keyed.append(
                server.request("POST", "/api/v1/items", b'{"name": "k"}', headers | key)
            )

    traffic(1)
    assert own_redis.keys("*:limits*"), "the limits count in Redis"
    assert {answer.status for answer in keyed} == {201}
    own_redis.kill()
    keyed.clear()
    traffic(3)
    # Served throughout; only requests whose key cannot be checked wait (503).
    assert set(served) <= {200, 201}, sorted(set(served))
    assert {answer.status for answer in keyed} <= {201, 503}
    assert 503 in {answer.status for answer in keyed}
    assert all(a.headers["Retry-After"] == "5" for a in keyed if a.status == 503)
    # Degraded, not unready: a Redis blip must not take every replica out of
    # rotation while they serve.
    ready = server.request("GET", "/health/ready")
    assert ready.status == 200
    assert ready.json()["checks"]["redis"]["status"] == "warn"
    assert ready.json()["checks"]["database"]["status"] == "pass"

    own_redis.start()  # an empty Redis on the same port, as after a restart
    time.sleep(4.5)  # each worker retries Redis 1, 2, then 4 s into the outage
    keyed.clear()
    traffic(1)
    assert own_redis.keys("*:limits*"), "the default limit counts in Redis again"
    assert own_redis.keys("*:idempotency:*"), "so do the idempotency keys"
    assert set(served) <= {200, 201}, sorted(set(served))
    assert {answer.status for answer in keyed} == {201}
    assert server.request("GET", "/health/ready").status == 200
    assert server.stop() == 0


# --- Logs and metrics of the production server ---------------------------------


def test_production_logs_are_json_lines_with_request_ids(
    start_server: Any, production_database: str, tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
        TMPDIR=str(temporary),
        # Empty is unset: not the working directory, whose *.db would go.
        PROMETHEUS_MULTIPROC_DIR="",
    )
    answer = server.request("GET", "/api/v1/items", headers={"X-Request-ID": "gw-1"})
    assert answer.headers["X-Request-ID"] == "gw-1"
    assert server.request("GET", "/metrics").status == 403  # not public
    # The workers count in a metrics directory of the server's own...
    assert [path.name[:8] for path in temporary.iterdir()] == ["metrics-"]
    assert server.stop() == 0
    # ...which goes when it stops.
    assert list(temporary.iterdir()) == []
    lines = server.lines()  # every line parses as JSON
    booted = [line for line in lines if "Booting worker" in line["event"]]
    assert booted
    assert booted[0]["logger"] == "gunicorn.error"
    (request,) = [line for line in lines if line.get("request_id") == "gw-1"]
    assert (request["event"], request["status"]) == ("request", 200)
    assert request["pid"] == booted[0]["pid"] != server.process.pid


def test_gunicorns_access_log_can_be_turned_on_in_the_same_format(
    start_server: Any, production_database: str, tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"  # "-" would be the server's stdout
    server = start_server(
        f"--access-logfile {access_log}",
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
    )
    server.request("GET", "/api/v1/items?page=2", headers={"X-Request-ID": "acc-1"})
    # A path of 4,000 characters: both lines of it say so, in 256 of them.
    long_path = "/" + "a" * 3999
    server.request("GET", long_path, headers={"X-Request-ID": "acc-2"})
    assert server.stop() == 0
    lines = [json.loads(line) for line in access_log.read_text().splitlines()]
    (access,) = [line for line in lines if line["request_id"] == "acc-1"]
    assert access["logger"] == "gunicorn.access"
    assert (access["path"], access["status"]) == ("/api/v1/items", "200")
    assert access["request_id"] == "acc-1"
    cut = long_path[:256] + "...[cut: 4000 characters]"
    (access,) = [line for line in lines if line["request_id"] == "acc-2"]
    (request,) = [line for line in server.lines() if line.get("request_id") == "acc-2"]
    assert access["path"] == request["path"] == cut
    assert len(json.dumps(access)) < 1024
    assert len(json.dumps(request)) < 1024


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when it is absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


@needs_redis
def test_metrics_add_up_across_workers_and_outlive_a_dead_one(
    start_server: Any,
    production_database: str,
    redis_settings: dict[str, str],
    tmp_path: Path,
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left by an earlier server")
    token = "t" * 8 + "Z3vQ9xT4mWz7Lr2Pb6Yc1Nd8Hs5Jf0G"
    server = start_server(
        SECRET_KEY=SAFE_SECRET,
        DATABASE_URL=production_database,
        WEB_CONCURRENCY="2",
        METRICS_TOKEN=token,
        PROMETHEUS_MULTIPROC_DIR=str(directory),
        # Rounds go on until both workers answered: on a loaded machine one
        # worker may take several, past the default read limit.
        POLICY_LIMIT_READ="100000 per minute",
        **redis_settings,
    )
    assert not (directory / "counter_999999.db").exists()  # emptied at start
    scrape = {"Authorization": f"Bearer {token}"}
    sent = 0
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    # Concurrent requests on fresh connections, until both workers served some.
    while len(pids) < 2:
        assert time.monotonic() < deadline, "one worker served every request"
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(
                pool.map(
                    lambda _: server.request("GET", "/api/v1/items").status, range(24)
                )
            )
        assert statuses == [200] * 24
        sent += 24
        pids = {
            line["pid"]
            for line in server.lines()
            if line["event"] == "request" and line["route"] == "/api/v1/items"
        }
    text = server.request("GET", "/metrics", headers=scrape).body.decode()
    labels = {"method": "GET", "route": "/api/v1/items", "status": "200"}
    assert metric_value(text, "http_requests_total", **labels) == sent
    assert metric_value(text, "http_request_duration_seconds_count", **labels) == sent

    # A worker that dies keeps its counts in the total; its replacement adds on.
    killed = pids.pop()
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if server.request("GET", "/api/v1/items").status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "no worker answered after the kill"
        time.sleep(0.1)
    text = server.request("GET", "/metrics", headers=scrape).body.decode()
    assert metric_value(text, "http_requests_total", **labels) == sent + 1
    # Its counts moved to the archive (once the master has reaped it): no file
    # of its own is left to read.
    wait_until(
        lambda: not list(directory.glob(f"*_{killed}.db")),
        seconds=10,
        what="the dead worker's files archived",
    )
    assert (directory / "counter_archive.db").exists()
    assert server.stop() == 0
