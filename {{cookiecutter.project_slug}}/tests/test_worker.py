"""A real Celery worker (services tier): tasks sent through the HTTP API run in
another process, over Redis and over RabbitMQ, and a worker killed mid-task
loses nothing.

Needs TEST_DATABASE_URL (a database both processes reach) and TEST_REDIS_URL;
the RabbitMQ cases need TEST_RABBITMQ_URL (amqp://guest:guest@127.0.0.1:5672//).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from fake_smtp import Behaviour, smtp_server
from {{ cookiecutter.package_name }}.tasks import celery_of, cleanup

from conftest import PASSWORD, PROJECT, AppFactory, signing_key_pem, wait_until

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

pytestmark = pytest.mark.skipif(
    not (DATABASE.startswith("postgresql") and REDIS),
    reason="a worker is another process: needs TEST_DATABASE_URL (PostgreSQL) "
    "and TEST_REDIS_URL",
)


def brokers() -> list[Any]:
    return [
        pytest.param(REDIS, id="redis"),
        pytest.param(
            RABBITMQ,
            id="rabbitmq",
            marks=pytest.mark.skipif(not RABBITMQ, reason="needs TEST_RABBITMQ_URL"),
        ),
    ]


@dataclass
class Worker:
    """`celery worker` for the test app's queue, as production starts it."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.write_bytes(b"")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - a fixed command line
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "--app",
                    "make_celery",
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--concurrency",
                    "1",
                    "--hostname",
                    f"test-{uuid.uuid4().hex[:8]}@%h",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: "ready." in self.output() or not self.running(), 60, "ready")
        assert self.running(), self.output()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

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
    new_worker: Callable[[], Worker]


@pytest.fixture(params=brokers())
def stack(
    request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path
) -> Iterator[Stack]:
    """The test app (sending to the broker), a fake SMTP server, and a factory
    of workers configured like production for the same queue and database."""
    broker: str = request.param
    with smtp_server() as (port, behaviour):
        app = make_app(tables=True, CELERY_BROKER_URL=broker)
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
            MAIL_BACKEND="smtp",
            MAIL_HOST="127.0.0.1",
            MAIL_PORT=str(port),
            MAIL_TIMEOUT="30",
        )
        workers: list[Worker] = []

        def new_worker() -> Worker:
            worker = Worker(env, tmp_path / f"worker-{len(workers)}.log")
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
    # The worker's log names the request that sent the task.
    wait_until(lambda: "e-mail sent" in worker.output(), 10, "the task's log line")
    sent = [line for line in worker.output().splitlines() if "e-mail sent" in line]
    assert sent
    assert "request_id=signup-7f3a" in sent[0]


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
