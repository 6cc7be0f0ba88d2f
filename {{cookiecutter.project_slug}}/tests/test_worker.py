"""A real Celery worker (services tier): tasks sent through the HTTP API run in
another process, over Redis and over RabbitMQ; a worker killed mid-task loses
nothing; its log lines are the app's JSON lines, and it serves the outcomes of
all its pool processes' tasks; its heartbeat passes its healthcheck while it
consumes, and readiness says whether one answers.

Needs TEST_DATABASE_URL (a database both processes reach) and TEST_REDIS_URL;
the RabbitMQ cases need TEST_RABBITMQ_URL (amqp://guest:guest@127.0.0.1:5672//).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from fake_smtp import Behaviour, smtp_server
from {{ cookiecutter.package_name }}.health.checks import registry
from {{ cookiecutter.package_name }}.tasks import accounts, celery_of, cleanup
from {{ cookiecutter.package_name }}.tasks.heartbeats import heartbeat_age
from {{ cookiecutter.package_name }}.tasks.workers import (
    SILENCE_FOR,
    WorkerPings,
)

from conftest import (
    PASSWORD,
    PROJECT,
    AppFactory,
    Relay,
    signing_key_pem,
    wait_until,
)

DATABASE = os.environ.get("TEST_DATABASE_URL", "")
REDIS = os.environ.get("TEST_REDIS_URL", "")
RABBITMQ = os.environ.get("TEST_RABBITMQ_URL", "")
AUTH = "/api/v1/auth"
# Short limits, so that Redis hands an unacknowledged task on within seconds.
LIMITS = {
    "CELERY_TASK_SOFT_TIME_LIMIT": "8",
    "CELERY_TASK_TIME_LIMIT": "9",
    "CELERY_RETRY_BACKOFF_MAX": "2",
    "CELERY_VISIBILITY_TIMEOUT": "10",
}
# How the tests start a worker, unless they say otherwise: the command line's
# level wins over LOG_LEVEL (WARNING in the workers' environment).
WORKER_ARGUMENTS = ("--loglevel", "INFO", "--concurrency", "1")
WELCOME = accounts.send_welcome_email.name
PURGE = cleanup.purge_expired.name

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (DATABASE.startswith("postgresql") and REDIS),
        reason="a worker is another process: needs TEST_DATABASE_URL (PostgreSQL) "
        "and TEST_REDIS_URL",
    ),
]


def brokers() -> list[Any]:
    return [
        pytest.param(REDIS, id="redis"),
        pytest.param(
            RABBITMQ,
            id="rabbitmq",
            marks=pytest.mark.skipif(not RABBITMQ, reason="needs TEST_RABBITMQ_URL"),
        ),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Worker:
    """`celery worker` for the test app's queue, as production starts it."""

    env: dict[str, str]
    # Its stderr: the log lines. (Celery prints its banner on stdout.)
    log: Path
    arguments: tuple[str, ...] = WORKER_ARGUMENTS
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.write_bytes(b"")
        with self.log.open("ab") as log, self.log.with_suffix(".out").open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603 - a fixed command line
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "--app",
                    "make_celery",
                    "worker",
                    *self.arguments,
                    "--hostname",
                    f"test-{uuid.uuid4().hex[:8]}@%h",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=PROJECT,
                env=self.env,
                stdout=out,
                stderr=log,
                start_new_session=True,
            )
        wait_until(lambda: "ready." in self.output() or not self.running(), 60, "ready")
        assert self.running(), self.output()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """The log lines so far, each of which must be a JSON object."""
        found = []
        for line in self.output().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line in the worker's log: {line!r}")
        return found

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: no chance to clean up."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM to the main process, as a container's init sends it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL whatever is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        else:
            # The pool's children die with the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Stack:
    app: Flask
    mail: Behaviour
    workers: list[Worker]
    new_worker: Callable[..., Worker]


@pytest.fixture(params=brokers())
def stack(
    request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path
) -> Iterator[Stack]:
    """The test app (sending to the broker), a fake SMTP server, and a factory
    of workers configured like production for the same queue and database."""
    broker: str = request.param
    with smtp_server() as (port, behaviour):
        # A probe's deadline a loaded machine cannot turn a ping into a timeout by.
        app = make_app(tables=True, CELERY_BROKER_URL=broker, HEALTH_CHECK_TIMEOUT=4)
        prefix = app.config["REDIS_KEY_PREFIX"]
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("APP_ENV", "FLASK_", "PYTEST_", "COV_"))
        }
        env.update(
            LIMITS,
            APP_ENV="production",
            SECRET_KEY=secrets.token_urlsafe(48),
            JWT_PRIVATE_KEY=signing_key_pem(),
            DATABASE_URL=DATABASE,
            REDIS_URL=REDIS,
            REDIS_KEY_PREFIX=prefix,
            CELERY_BROKER_URL=broker,
            CELERY_BEAT_SCHEDULE_FILE=str(tmp_path / "beat"),
            CELERY_WORKER_HEARTBEAT_FILE=str(tmp_path / "worker.heartbeat"),
            MAIL_BACKEND="smtp",
            MAIL_HOST="127.0.0.1",
            MAIL_PORT=str(port),
            MAIL_TIMEOUT="30",
            LOG_LEVEL="WARNING",
        )
        workers: list[Worker] = []

        def new_worker(*arguments: str, **variables: str) -> Worker:
            """A started worker: WORKER_ARGUMENTS unless `arguments`, and the
            environment with `variables`."""
            worker = Worker(
                env | variables,
                tmp_path / f"worker-{len(workers)}.log",
                arguments or WORKER_ARGUMENTS,
            )
            workers.append(worker)
            worker.start()
            return worker

        try:
            yield Stack(app, behaviour, workers, new_worker)
        finally:
            for worker in workers:
                worker.stop()
            if broker.startswith("amqp"):
                with celery_of(app).connection_for_write() as connection:
                    channel: Any = connection.default_channel
                    channel.queue_delete(prefix)
                    # The control and event exchanges are the test app's own too.
                    channel.exchange_delete(f"{prefix}.pidbox")
                    channel.exchange_delete(f"reply.{prefix}.pidbox")
                    channel.exchange_delete(f"{prefix}.events")


def sign_up(app: Flask, email: str, request_id: str) -> None:
    response = app.test_client().post(
        f"{AUTH}/register",
        json={"email": email, "password": PASSWORD},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 201, response.get_data(as_text=True)


def test_a_sign_up_is_welcomed_by_the_worker(stack: Stack) -> None:
    worker = stack.new_worker()
    sign_up(stack.app, "worker@example.com", "signup-7f3a")
    wait_until(lambda: len(stack.mail.messages) == 1, 30, "the welcome e-mail")
    assert b"To: worker@example.com" in stack.mail.messages[0]
    wait_until(lambda: "succeeded in" in worker.output(), 10, "the task's end")
    # JSON lines, as the web server's; the task's name the request that sent it.
    lines = worker.lines()
    [sent] = [line for line in lines if "e-mail sent" in line["event"]]
    assert sent["request_id"] == "signup-7f3a"
    assert sent["task_name"] == WELCOME
    assert sent["level"] == "info"  # --loglevel INFO won over LOG_LEVEL
    # Celery's own lines about the task name it: as it arrived (in the main
    # process) and as it ended (in the pool process).
    about = [line for line in lines if line.get("task_id") == sent["task_id"]]
    [received] = [line for line in about if line["event"].endswith("received")]
    [succeeded] = [line for line in about if "succeeded in" in line["event"]]
    assert succeeded["request_id"] == "signup-7f3a"
    assert received["task_name"] == WELCOME


def task_outcomes(port: int) -> dict[tuple[str, str], float]:
    """celery_tasks_total from a worker's metrics server, by task and outcome."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.labels["task"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "celery_tasks_total"
    }


def test_a_worker_serves_the_outcomes_of_all_its_processes(
    stack: Stack, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = directory / "counter_4242.db"
    stale.write_bytes(b"the last run's values")
    port = free_port()
    stack.mail.go.clear()  # each task waits in SMTP, holding its pool process
    worker = stack.new_worker(
        # No --loglevel, as compose.yaml runs it: LOG_LEVEL decides.
        "--concurrency",
        "2",
        LOG_LEVEL="INFO",
        CELERY_METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )
    assert not stale.exists()  # every start counts from zero
    sign_up(stack.app, "one@example.com", "metrics-1")
    sign_up(stack.app, "two@example.com", "metrics-2")
    wait_until(lambda: stack.mail.connections >= 2, 30, "both pool processes busy")
    # Queued behind them, and revoked before it runs: by the main process.
    celery = celery_of(stack.app)
    revoked = celery.tasks[PURGE].delay()
    assert celery.control.revoke(revoked.id, reply=True, timeout=10, limit=1)
    stack.mail.refusals.append("451 try again later")  # one of the two retries
    stack.mail.go.set()
    expected = {(WELCOME, "success"): 2, (WELCOME, "retry"): 1, (PURGE, "revoked"): 1}
    wait_until(lambda: task_outcomes(port) == expected, 30, f"outcomes {expected}")
    # Each pool process (and the main one) wrote its own values, added up above.
    assert len(list(directory.glob("counter_*.db"))) == 3
    assert len(stack.mail.messages) == 2
    # LOG_LEVEL=INFO without --loglevel: Celery's default (WARNING) did not win.
    assert any(line["event"].endswith("ready.") for line in worker.lines())


def test_a_result_comes_back_through_the_backend(stack: Stack) -> None:
    stack.new_worker()
    purge = celery_of(stack.app).tasks[cleanup.purge_expired.name]
    result = purge.delay().get(timeout=30)
    assert result == {"token_families": 0, "idempotency_keys_given_expiry": 0}


def test_a_worker_killed_mid_task_loses_nothing(stack: Stack) -> None:
    stack.mail.go.clear()  # the mail server hangs: the task waits in SMTP
    first = stack.new_worker()
    sign_up(stack.app, "survivor@example.com", "signup-kill")
    wait_until(lambda: stack.mail.connections >= 1, 30, "the task to start")
    first.kill()
    assert stack.mail.messages == []
    stack.mail.go.set()
    stack.new_worker()
    # Redis hands the unacknowledged task on after its visibility timeout;
    # RabbitMQ as soon as the dead worker's connection closes.
    wait_until(lambda: len(stack.mail.messages) == 1, 60, "the redelivered task")
    assert b"To: survivor@example.com" in stack.mail.messages[0]
    time.sleep(1)
    assert len(stack.mail.messages) == 1


def test_a_warm_shutdown_finishes_the_running_task(stack: Stack) -> None:
    stack.mail.go.clear()
    worker = stack.new_worker()
    sign_up(stack.app, "patient@example.com", "signup-term")
    wait_until(lambda: stack.mail.connections >= 1, 30, "the task to start")
    assert worker.process is not None
    worker.terminate()
    time.sleep(0.5)
    stack.mail.go.set()
    assert worker.process.wait(timeout=30) == 0
    assert len(stack.mail.messages) == 1


# --- The worker's heartbeat and readiness -----------------------------------------


def worker_alive(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """`flask tasks worker-alive`, as compose runs it beside the worker."""
    return subprocess.run(  # noqa: S603 - our own interpreter and command
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "{{ cookiecutter.package_name }}",
            "tasks",
            "worker-alive",
            *args,
        ],
        cwd=PROJECT,
        # As in the image: the environment only, no .env file.
        env=worker.env | {"FLASK_SKIP_DOTENV": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def heartbeat_of(worker: Worker) -> Path:
    return Path(worker.env["CELERY_WORKER_HEARTBEAT_FILE"])


def written_at(path: Path) -> float:
    return float(path.read_text(encoding="ascii"))


def test_a_consuming_worker_passes_its_healthcheck_until_it_stops(
    stack: Stack,
) -> None:
    worker = stack.new_worker()
    alive = worker_alive(worker)
    assert alive.returncode == 0, alive.stderr
    assert alive.stdout.startswith("worker: alive, last heartbeat ")
    # Kept fresh while it runs (Celery's Heart, every 2 s), not written once.
    path = heartbeat_of(worker)
    first = written_at(path)
    wait_until(lambda: written_at(path) > first + 1.5, 15, "a later heartbeat")
    worker.stop()  # SIGTERM: a warm shutdown
    assert worker.process is not None
    assert worker.process.returncode == 0
    assert not path.exists()
    stopped = worker_alive(worker)
    assert stopped.returncode == 1
    assert stopped.stderr == f"worker: no heartbeat at {path}\n"


def test_a_worker_cut_off_from_its_broker_stops_its_heartbeat(
    stack: Stack,
) -> None:
    broker = urllib.parse.urlsplit(stack.app.config["CELERY_BROKER_URL"])
    assert broker.hostname is not None
    assert broker.port is not None
    relay = Relay(broker.hostname, broker.port)
    login = broker.netloc.rpartition("@")[0]
    relayed = broker._replace(
        netloc=f"{login}@127.0.0.1:{relay.port}" if login else f"127.0.0.1:{relay.port}"
    )
    try:
        worker = stack.new_worker(CELERY_BROKER_URL=relayed.geturl())
        path = heartbeat_of(worker)

        def age() -> float:
            found = heartbeat_age(path, time.time())
            return float("inf") if found is None else found

        relay.cut()
        # Two of the Heart's beats missed: the healthcheck fails at --max-age.
        wait_until(lambda: age() > 5, 60, "the heartbeat to go stale")
        relay.restore()
        wait_until(lambda: age() < 3, 90, "the worker to reconnect and beat again")
        assert worker.running()
    finally:
        for started in stack.workers:
            started.stop()
        relay.close()


def test_readiness_warns_without_a_worker_and_passes_with_one(stack: Stack) -> None:
    client = stack.app.test_client()
    response = client.get("/health/ready")
    # No worker: a warning, and the web process stays in rotation.
    assert response.status_code == 200, response.json
    assert response.json is not None
    assert response.json["status"] == "pass"
    assert response.json["checks"]["broker"]["status"] == "pass"
    workers = response.json["checks"]["workers"]
    assert workers["status"] == "warn"
    assert workers["error"] == (
        "no worker answered a ping within 2 s, nor since this process started"
    )
    assert workers["duration_ms"] >= 2000
    stack.new_worker()
    # The unanswered ping is remembered for SILENCE_FOR seconds: the next
    # probes report it at once, without pinging.
    response = client.get("/health/ready")
    assert response.json is not None
    workers = response.json["checks"]["workers"]
    assert (workers["status"], workers["duration_ms"] < 100) == ("warn", True)
    # Once that is over, a ping finds the worker.
    pings = registry(stack.app).ready["workers"].check
    assert isinstance(pings, WorkerPings)
    assert pings.pinged is not None
    pings.pinged -= SILENCE_FOR
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json is not None
    workers = response.json["checks"]["workers"]
    assert (workers["status"], workers["detail"]) == (
        "pass",
        "a worker answered 0 s ago",
    )
    # The answer is remembered: the next probe does not wait for a ping.
    response = client.get("/health/ready")
    assert response.json is not None
    assert response.json["checks"]["workers"]["status"] == "pass"
    assert response.json["checks"]["workers"]["duration_ms"] < 100
