"""Background jobs without a broker: settings, the welcome e-mail, the cleanup,
beat's heartbeat, and what task runs log and count (tests/test_worker.py runs
a real worker)."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from celery import Celery, signals
from celery.app.log import Logging
from celery.app.trace import LOG_RECEIVED
from celery.bin.worker import worker as worker_command
from celery.exceptions import Retry
from celery.utils.timer2 import Timer
from celery.worker.heartbeat import Heart
from click.core import ParameterSource
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fake_smtp import smtp_server
from {{ cookiecutter.package_name }}.config import ConfigError, load_config
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.health import HealthCheckError
from {{ cookiecutter.package_name }}.models import TokenFamily, User
from {{ cookiecutter.package_name }}.models.base import utcnow
from {{ cookiecutter.package_name }}.observability import metrics, metrics_of
from {{ cookiecutter.package_name }}.resilience import redis_store
from {{ cookiecutter.package_name }}.tasks import (
    accounts,
    celery_of,
    cleanup,
    heartbeats,
    monitoring,
)
from {{ cookiecutter.package_name }}.tasks.beat import (
    HeartbeatScheduler,
    heartbeat_file,
)
from {{ cookiecutter.package_name }}.tasks.heartbeats import (
    WORKER_HEARTBEAT_FILE,
    heartbeat_age,
    write_heartbeat,
)
from {{ cookiecutter.package_name }}.tasks.workers import (
    FRESH_FOR,
    SILENCE_FOR,
    WorkerPings,
)

from conftest import (
    PASSWORD,
    PROJECT,
    AppFactory,
    RedisTarget,
    add_account,
    production_settings,
    wait_until,
)

AUTH = "/api/v1/auth"
PACKAGE = "{{ cookiecutter.package_name }}"
WELCOME = accounts.send_welcome_email.name
PURGE = cleanup.purge_expired.name


def outbox(app: Flask) -> list[email.message.EmailMessage]:
    """The messages the file backend wrote, oldest first."""
    folder = Path(app.instance_path, app.config["MAIL_FILE_DIRECTORY"])
    files = sorted(folder.glob("*.eml"), key=lambda path: path.stat().st_mtime_ns)
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in files
    ]


@pytest.fixture
def mail_app(make_app: AppFactory, tmp_path: Path) -> Iterator[Flask]:
    """A testing app (eager tasks) whose e-mails land in tmp_path/outbox."""
    app = make_app(
        tables=True, MAIL_BACKEND="file", MAIL_FILE_DIRECTORY=str(tmp_path / "outbox")
    )
    with app.app_context():
        yield app


def task(app: Flask, name: str) -> Any:
    """`app`'s own instance of a task (each app has its Celery)."""
    return celery_of(app).tasks[name]


def forget_welcome(app: Flask, user_id: int) -> None:
    """Drop the mark of a sent welcome e-mail (in Redis or in memory)."""
    store = redis_store(app)
    if store is None:
        accounts.memory_marks().discard(accounts.sent_key(user_id))
    else:
        store.delete(store.key(accounts.sent_key(user_id)))


# --- Settings -------------------------------------------------------------------


def test_without_a_broker_tasks_run_eagerly_and_raise(app: Flask) -> None:
    settings = celery_of(app).conf
    assert settings.task_always_eager is True
    assert settings.task_eager_propagates is True
    assert settings.broker_url == "memory://localhost/"


def test_messages_are_json_only_and_survive_a_dead_worker(app: Flask) -> None:
    settings = celery_of(app).conf
    assert settings.accept_content == ["json"]
    assert settings.task_serializer == "json"
    assert settings.result_accept_content == ["json"]
    assert settings.task_acks_late is True
    assert settings.task_reject_on_worker_lost is True
    assert settings.worker_prefetch_multiplier == 1
    assert settings.task_soft_time_limit < settings.task_time_limit
    visibility = settings.broker_transport_options["visibility_timeout"]
    assert visibility > settings.task_time_limit
    # Each service (and each test app) has a queue of its own, and its own
    # exchanges for control commands and worker events on a shared broker.
    prefix = app.config["REDIS_KEY_PREFIX"]
    assert settings.task_default_queue == prefix
    assert settings.control_exchange == prefix
    assert settings.event_exchange == f"{prefix}.events"
    # A silent AMQP connection is found dead in about 20 s, not 240 s.
    assert settings.broker_heartbeat == 10


@pytest.mark.parametrize(
    "name", [accounts.send_welcome_email.name, cleanup.purge_expired.name]
)
def test_every_task_acknowledges_late(make_app: AppFactory, name: str) -> None:
    bound = task(make_app(), name)
    assert bound.acks_late is True
    assert bound.reject_on_worker_lost is True
    assert bound.soft_time_limit == 60
    assert bound.time_limit == 90


def test_beat_runs_the_cleanup_on_the_configured_interval(
    make_app: AppFactory,
) -> None:
    settings = celery_of(make_app(CLEANUP_INTERVAL=600)).conf
    entry = settings.beat_schedule["purge-expired-sign-ins"]
    assert entry["task"] == cleanup.purge_expired.name
    assert entry["schedule"] == 600
    assert settings.beat_scheduler.endswith("tasks.beat:HeartbeatScheduler")


def test_a_broker_makes_tasks_go_to_it(make_app: AppFactory) -> None:
    app = make_app(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    settings = celery_of(app).conf
    assert settings.task_always_eager is False
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672//"


def test_redis_url_is_the_broker_unless_celery_broker_url_says_otherwise() -> None:
    redis_only = load_config("development", {"REDIS_URL": "redis://r:6379/0"})
    assert redis_only.CELERY_BROKER_URL == "redis://r:6379/0"
    override = load_config(
        "development",
        {"REDIS_URL": "redis://r:6379/0", "CELERY_BROKER_URL": "amqp://mq:5672//"},
    )
    assert override.CELERY_BROKER_URL == "amqp://mq:5672//"
    assert load_config("development", {}).CELERY_BROKER_URL is None


def test_tests_never_use_the_real_broker_setting() -> None:
    config = load_config(
        "testing",
        {"CELERY_BROKER_URL": "amqp://mq:5672//", "TEST_REDIS_URL": "redis://r/15"},
    )
    assert config.CELERY_BROKER_URL is None
    named = load_config("testing", {"TEST_CELERY_BROKER_URL": "redis://r/14"})
    assert named.CELERY_BROKER_URL == "redis://r/14"


def test_production_without_a_broker_refuses_to_start() -> None:
    settings = production_settings()
    del settings["CELERY_BROKER_URL"]
    config = load_config("production", settings)
    with pytest.raises(ConfigError, match="No broker: set REDIS_URL"):
        config.validate(config.settings())


def test_production_refuses_an_smtp_login_in_clear_text() -> None:
    config = load_config(
        "production",
        production_settings(
            REDIS_URL="redis://r:6379/0",
            MAIL_BACKEND="smtp",
            MAIL_USERNAME="mailer",
            MAIL_PASSWORD="pw",
        ),
    )
    with pytest.raises(ConfigError, match="MAIL_SECURITY=none"):
        config.validate(config.settings())


def test_production_refuses_mail_in_the_logs_unless_told_it_may() -> None:
    settings = production_settings()
    del settings["MAIL_BACKEND"]  # the default: console
    config = load_config("production", settings)
    with pytest.raises(ConfigError, match="MAIL_BACKEND=console writes every"):
        config.validate(config.settings())
    accepted = load_config(
        "production", {**settings, "MAIL_CONSOLE_IN_PRODUCTION": "true"}
    )
    accepted.validate(accepted.settings())
    assert accepted.MAIL_BACKEND == "console"


def test_production_with_redis_has_its_broker() -> None:
    settings = production_settings(REDIS_URL="redis://r:6379/0")
    del settings["CELERY_BROKER_URL"]
    config = load_config("production", settings)
    config.validate(config.settings())
    assert config.CELERY_BROKER_URL == "redis://r:6379/0"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CELERY_BROKER_URL": "r:6379"}, "CELERY_BROKER_URL is not a broker URL"),
        ({"CELERY_BROKER_URL": "sqs://queue"}, "is not a broker URL"),
        ({"CELERY_BROKER_URL": "redis://127.0.0.1:abc/3"}, "is not a broker URL"),
        ({"CELERY_BROKER_URL": "amqp://g:x@mq:notaport//"}, "is not a broker URL"),
        ({"CELERY_BROKER_URL": "redis://"}, "is not a broker URL"),
        (
            {"CELERY_TASK_SOFT_TIME_LIMIT": "90", "CELERY_TASK_TIME_LIMIT": "90"},
            "SOFT_TIME_LIMIT must be below",
        ),
        ({"CELERY_VISIBILITY_TIMEOUT": "60"}, "VISIBILITY_TIMEOUT must exceed"),
        ({"CELERY_RETRY_BACKOFF_MAX": "7200"}, "VISIBILITY_TIMEOUT must exceed"),
        ({"CELERY_WORKER_CONCURRENCY": "0"}, "CELERY_WORKER_CONCURRENCY"),
        ({"MAIL_BACKEND": "carrier-pigeon"}, "MAIL_BACKEND='carrier-pigeon'"),
        ({"MAIL_SECURITY": "ssl3"}, "MAIL_SECURITY='ssl3' is not one of"),
        ({"MAIL_PORT": "70000"}, "MAIL_PORT"),
        ({"MAIL_CONSOLE_IN_PRODUCTION": "maybe"}, "MAIL_CONSOLE_IN_PRODUCTION"),
        ({"CLEANUP_INTERVAL": "1"}, "CLEANUP_INTERVAL"),
        ({"CELERY_METRICS_PORT": "9100"}, "without PROMETHEUS_MULTIPROC_DIR"),
        (
            {"CELERY_METRICS_PORT": "70000", "PROMETHEUS_MULTIPROC_DIR": "metrics"},
            "CELERY_METRICS_PORT='70000' is more than",
        ),
        ({"CELERY_METRICS_HOST": "metrics.local"}, "is not an IP address"),
    ],
)
def test_bad_job_settings_are_refused_by_name(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("development", environ)


def test_worker_concurrency_is_passed_on(make_app: AppFactory) -> None:
    config = load_config("development", {"CELERY_WORKER_CONCURRENCY": "3"})
    assert config.CELERY_WORKER_CONCURRENCY == 3
    app = make_app(CELERY_WORKER_CONCURRENCY=3)
    assert celery_of(app).conf.worker_concurrency == 3


def test_the_worker_metrics_settings_are_passed_on(make_app: AppFactory) -> None:
    config = load_config(
        "development",
        {
            "CELERY_METRICS_PORT": "9100",
            "CELERY_METRICS_HOST": "0.0.0.0",  # noqa: S104 - a container's setting
            "PROMETHEUS_MULTIPROC_DIR": "metrics",
        },
    )
    assert (config.CELERY_METRICS_PORT, config.CELERY_METRICS_HOST) == (
        9100,
        "0.0.0.0",  # noqa: S104
    )
    default = load_config("development", {})
    assert (default.CELERY_METRICS_PORT, default.CELERY_METRICS_HOST) == (
        None,
        "127.0.0.1",
    )
    settings = celery_of(make_app(CELERY_METRICS_PORT=9100)).conf
    assert settings[monitoring.METRICS_PORT] == 9100
    assert settings[monitoring.METRICS_HOST] == "127.0.0.1"


def import_make_celery(
    script: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run `script` (which imports make_celery) in a fresh interpreter, with
    none of the caller's app settings but `variables`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("APP_ENV", "FLASK_", "DATABASE_URL", "SECRET_KEY"))
    }
    return subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script],
        cwd=PROJECT,
        env=env | variables,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_entry_point_builds_the_configured_app() -> None:
    result = import_make_celery(
        "import make_celery; c = make_celery.celery_app; "
        "print(c.main, c.conf.task_always_eager)",
        APP_ENV="testing",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == [PACKAGE, "True"]


def test_the_entry_point_refuses_production_without_settings() -> None:
    result = import_make_celery("import make_celery")
    assert result.returncode == 1
    # One line, as Gunicorn and flask refuse, not a traceback.
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    assert "DATABASE_URL" in line or "SECRET_KEY" in line


# --- The welcome e-mail -----------------------------------------------------------


def test_signing_up_sends_one_welcome_email(mail_app: Flask) -> None:
    response = mail_app.test_client().post(
        f"{AUTH}/register", json={"email": "New@Example.com", "password": PASSWORD}
    )
    assert response.status_code == 201
    [message] = outbox(mail_app)
    assert message["To"] == "new@example.com"
    assert message["Subject"] == f"Welcome to {mail_app.config['SERVICE_NAME']}"
    assert message["Message-ID"]
    assert "new@example.com" in message.get_content()
    # Nothing of the password travels.
    assert PASSWORD not in message.as_string()


def test_accounts_made_on_the_command_line_are_welcomed_too(mail_app: Flask) -> None:
    result = mail_app.test_cli_runner().invoke(
        args=["create-user", "--email", "cli@example.com"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert [message["To"] for message in outbox(mail_app)] == ["cli@example.com"]


def test_a_refused_sign_up_sends_nothing(mail_app: Flask) -> None:
    response = mail_app.test_client().post(
        f"{AUTH}/register", json={"email": "weak@example.com", "password": "short"}
    )
    assert response.status_code == 422
    assert outbox(mail_app) == []


def test_the_welcome_task_is_idempotent(mail_app: Flask) -> None:
    account = add_account(mail_app, "once@example.com")
    send = task(mail_app, accounts.send_welcome_email.name)
    assert send.delay(account.id).get() is False
    assert send.delay(account.id).get() is False
    assert len(outbox(mail_app)) == 1


@pytest.mark.parametrize(
    "argument",
    [2.5, 1.0, True, False, "abc", "2", 10**30, 2**31, 0, -1, None, [2], {"id": 2}],
    ids=repr,
)
def test_the_welcome_task_refuses_what_is_no_user_id_for_good(
    mail_app: Flask, caplog: pytest.LogCaptureFixture, argument: object
) -> None:
    for number in (1, 2):
        account = add_account(mail_app, f"user{number}@example.com")
        forget_welcome(mail_app, account.id)
    sent = len(outbox(mail_app))
    caplog.clear()
    send = task(mail_app, accounts.send_welcome_email.name)
    result = send.delay(argument)
    assert result.get() is False
    assert result.state == "SUCCESS"  # not retried, not failed
    # 2.5 is not user 2 and True is not user 1: nobody is mailed, nothing marked.
    assert len(outbox(mail_app)) == sent
    assert not accounts.already_sent(1)
    assert not accounts.already_sent(2)
    refusals = [
        record for record in caplog.records if record.name == accounts.logger.name
    ]
    assert [record.getMessage() for record in refusals] == [
        f"welcome e-mail not sent: {repr(argument)[:64]} is not a user id"
    ]
    assert refusals[0].exc_info is None


@pytest.fixture
def redis_mail_app(
    make_app: AppFactory, redis_target: RedisTarget, tmp_path: Path
) -> Flask:
    """A testing app with its shared state in Redis and e-mail in tmp_path."""
    return make_app(
        tables=True,
        MAIL_BACKEND="file",
        MAIL_FILE_DIRECTORY=str(tmp_path),
        **redis_target.settings(),
    )


def test_marks_of_sent_mail_are_shared_through_redis(
    redis_mail_app: Flask, redis_target: RedisTarget
) -> None:
    app = redis_mail_app
    with app.app_context():
        account = add_account(app, "shared@example.com")
        key = f"{redis_target.prefix}:{accounts.sent_key(account.id)}"
        assert redis_target.get(key) == b"1"
        assert accounts.already_sent(account.id)


def test_no_welcome_for_a_missing_or_inactive_account(mail_app: Flask) -> None:
    send = task(mail_app, accounts.send_welcome_email.name)
    assert send.delay(10_000).get() is False
    account = add_account(mail_app, "gone@example.com")
    user = db.session.get(User, account.id)
    assert user is not None
    user.active = False
    db.session.commit()
    forget_welcome(mail_app, account.id)
    assert send.delay(account.id).get() is False
    assert len(outbox(mail_app)) == 1  # the one sent when the account was made


@pytest.mark.parametrize(
    "stored",
    [
        "m1@evil.example,root,postmaster",
        "a<victim@example.com>",
        "grp:victim@example.com;",
        "victim@example.com\x85",
        "victim@example.com\u2028",
        # RFC 2047 encoded words, which the To header would decode.
        "=?utf-8?q?attacker=40evil.test=2C?=x1@example.com",
        "=?utf-8?q?a=0D=0Ab?=@example.com",
    ],
)
def test_an_address_stored_before_parsing_gets_no_mail(
    mail_app: Flask, caplog: pytest.LogCaptureFixture, stored: str
) -> None:
    # Sign-up parses addresses now; an account from before may hold any text.
    user = User(email=stored, password_hash="-", roles=["user"])
    db.session.add(user)
    db.session.commit()
    send = task(mail_app, accounts.send_welcome_email.name)
    with caplog.at_level(logging.WARNING):
        assert send.delay(user.id).get() is False
    assert outbox(mail_app) == []
    assert "the recipient is not exactly one mailbox" in caplog.text
    assert "Traceback" not in caplog.text


def smtp_app(make_app: AppFactory, port: int) -> Flask:
    return make_app(
        tables=True, MAIL_BACKEND="smtp", MAIL_HOST="127.0.0.1", MAIL_PORT=port
    )


def test_smtp_delivers_with_the_configured_server(make_app: AppFactory) -> None:
    with smtp_server() as (port, behaviour):
        app = smtp_app(make_app, port)
        with app.app_context():
            add_account(app, "smtp@example.com")
    [message] = behaviour.messages
    assert b"To: smtp@example.com" in message


def test_a_temporary_refusal_is_retried(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(tables=True, MAIL_BACKEND="file", MAIL_FILE_DIRECTORY=str(tmp_path))
    with app.app_context(), smtp_server() as (port, behaviour):
        account = add_account(app, "retry@example.com")
        forget_welcome(app, account.id)
        app.config.update(MAIL_BACKEND="smtp", MAIL_HOST="127.0.0.1", MAIL_PORT=port)
        behaviour.refusals = ["451 try again later"]
        # Run eagerly, a retry runs at once (a worker waits its backoff first).
        result = task(app, accounts.send_welcome_email.name).apply(
            args=[account.id], throw=False
        )
        assert result.get() is True
        # The first e-mail (to the outbox), then the retried one.
        assert task_outcomes(app) == {(WELCOME, "success"): 2, (WELCOME, "retry"): 1}
    assert behaviour.connections == 2
    assert len(behaviour.messages) == 1


def test_eager_tasks_raise_where_they_are_sent(make_app: AppFactory) -> None:
    with smtp_server() as (port, behaviour):
        app = smtp_app(make_app, port)
        send = task(app, accounts.send_welcome_email.name)
        with app.app_context():
            account = add_account(app, "eager@example.com")
            forget_welcome(app, account.id)
            behaviour.refusals = ["451 try again later"]
            with pytest.raises(Retry):
                send.delay(account.id)
            # Celery signals nothing for an error it lets through: still counted.
            assert task_outcomes(app)[WELCOME, "retry"] == 1


def test_a_database_that_does_not_answer_is_retried(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/missing/app.db")
    with app.app_context(), pytest.raises(Retry):
        task(app, accounts.send_welcome_email.name).delay(1)


def test_redis_that_does_not_answer_is_retried(
    redis_mail_app: Flask, redis_target: RedisTarget
) -> None:
    app = redis_mail_app
    with app.app_context():
        account = add_account(app, "later@example.com")
        forget_welcome(app, account.id)
        redis_target.cut()
        try:
            with pytest.raises(Retry):
                task(app, accounts.send_welcome_email.name).delay(account.id)
        finally:
            redis_target.restore()


def test_an_address_the_server_cannot_carry_is_not_retried(
    make_app: AppFactory,
) -> None:
    # The fake server offers no SMTPUTF8: a non-ASCII address cannot be sent.
    with smtp_server() as (port, behaviour):
        app = smtp_app(make_app, port)
        with app.app_context():
            account = add_account(app, "jürgen@example.com")
            assert not accounts.already_sent(account.id)
    assert behaviour.messages == []


def test_a_permanent_refusal_is_not_retried(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with smtp_server() as (port, behaviour):
        behaviour.refusals = ["550 no such mailbox"]
        app = smtp_app(make_app, port)
        with app.app_context():
            account = add_account(app, "nobody@example.com")
            assert not accounts.already_sent(account.id)
    assert behaviour.connections == 1
    assert behaviour.messages == []
    assert "refused the message (550)" in caplog.text


def test_the_retry_backoff_is_exponential_with_jitter(make_app: AppFactory) -> None:
    with make_app(CELERY_RETRY_BACKOFF_MAX=20).app_context():
        for retries in range(10):
            delays = {accounts.retry_delay(retries) for _ in range(200)}
            assert max(delays) <= min(2 * 2**retries, 20)
            assert min(delays) >= 0
            # Jitter: the delays of many failed tasks differ.
            assert len(delays) > 1
    assert accounts.send_welcome_email.max_retries == 8


def test_a_broker_that_is_down_does_not_fail_the_sign_up(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tables=True, CELERY_BROKER_URL="redis://127.0.0.1:9/0")
    started = time.monotonic()
    response = app.test_client().post(
        f"{AUTH}/register", json={"email": "late@example.com", "password": PASSWORD}
    )
    assert response.status_code == 201
    assert time.monotonic() - started < 15
    assert "could not queue (or, eagerly, send) the welcome e-mail" in caplog.text


def test_the_console_backend_logs_the_message(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(tables=True, MAIL_BACKEND="console")
    with app.app_context():
        add_account(app, "console@example.com")
    assert "to console@example.com" in caplog.text
    assert "Hello," in caplog.text


# --- The cleanup ------------------------------------------------------------------


def family(user_id: int, name: str, **times: Any) -> TokenFamily:
    return TokenFamily(
        id=name,
        user_id=user_id,
        user_uniquifier="u",
        current_jti="j",
        expires_at=times.get("expires_at", utcnow() + timedelta(days=1)),
        revoked_at=times.get("revoked_at"),
    )


def test_cleanup_deletes_expired_and_long_revoked_sign_ins(app: Flask) -> None:
    account = add_account(app, "old@example.com")
    now = utcnow()
    db.session.add_all(
        [
            family(account.id, "live"),
            family(account.id, "expired", expires_at=now - timedelta(seconds=1)),
            family(account.id, "revoked-now", revoked_at=now),
            family(account.id, "revoked-long-ago", revoked_at=now - timedelta(days=2)),
        ]
    )
    db.session.commit()
    purged = task(app, cleanup.purge_expired.name).delay().get()
    assert purged == {"token_families": 2, "idempotency_keys_given_expiry": 0}
    left = db.session.scalars(select(TokenFamily.id).order_by(TokenFamily.id)).all()
    assert left == ["live", "revoked-now"]
    # Twice is harmless.
    assert task(app, cleanup.purge_expired.name).delay().get()["token_families"] == 0


def test_cleanup_gives_stray_idempotency_records_an_expiry(
    make_app: AppFactory, redis_target: RedisTarget
) -> None:
    app = make_app(tables=True, IDEMPOTENCY_TTL=300, **redis_target.settings())
    prefix = redis_target.prefix
    redis_target.client.set(f"{prefix}:idempotency:a:b", "{}")
    redis_target.client.set(f"{prefix}:idempotency:a:c", "{}", ex=50)
    redis_target.client.set(f"{prefix}:other", "{}")
    with app.app_context():
        purged = cleanup.purge_expired.run()
    assert purged["idempotency_keys_given_expiry"] == 1
    assert 0 < int(redis_target.client.ttl(f"{prefix}:idempotency:a:b")) <= 300  # type: ignore[arg-type]
    assert int(redis_target.client.ttl(f"{prefix}:idempotency:a:c")) <= 50  # type: ignore[arg-type]
    assert int(redis_target.client.ttl(f"{prefix}:other")) == -1  # type: ignore[arg-type]


def test_the_cleanup_command_reports_what_it_did(app: Flask) -> None:
    account = add_account(app, "cmd@example.com")
    db.session.add(family(account.id, "gone", expires_at=utcnow() - timedelta(days=1)))
    db.session.commit()
    result = app.test_cli_runner().invoke(args=["tasks", "cleanup"])
    assert result.exit_code == 0, result.output
    assert "Deleted 1 sign-in(s)" in result.output


# --- Beat's heartbeat -------------------------------------------------------------


def test_each_tick_of_beat_writes_its_heartbeat(app: Flask, tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    scheduler = HeartbeatScheduler(app=celery_of(app), schedule_filename=str(schedule))
    try:
        interval = scheduler.tick()
        assert 0 <= interval <= celery_of(app).conf.beat_max_loop_interval
        written = float(heartbeat_file(schedule).read_text(encoding="ascii"))
        assert abs(time.time() - written) < 1
    finally:
        scheduler.close()


def beat_alive(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["tasks", "beat-alive", *args])
    return result.exit_code, result.output


def test_beat_alive_passes_on_a_fresh_heartbeat(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(CELERY_BEAT_SCHEDULE_FILE=str(tmp_path / "schedule"))
    write_heartbeat(heartbeat_file(tmp_path / "schedule"), time.time() - 5)
    code, output = beat_alive(app)
    assert code == 0, output
    assert "beat: alive" in output


def test_beat_alive_fails_on_a_stale_or_missing_heartbeat(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(CELERY_BEAT_SCHEDULE_FILE=str(tmp_path / "schedule"))
    code, output = beat_alive(app)
    assert code == 1
    assert "no heartbeat" in output
    write_heartbeat(heartbeat_file(tmp_path / "schedule"), time.time() - 500)
    code, output = beat_alive(app)
    assert code == 1
    assert "over 90 s" in output
    assert beat_alive(app, "--max-age", "600")[0] == 0


# --- The worker's heartbeat -------------------------------------------------------


@pytest.fixture
def heartbeat_app(make_app: AppFactory, tmp_path: Path) -> Flask:
    """An app whose worker's heartbeat goes into a folder not made yet."""
    return make_app(CELERY_WORKER_HEARTBEAT_FILE=str(tmp_path / "var" / "worker"))


def worker_heartbeat(app: Flask) -> Path:
    return Path(celery_of(app).conf[WORKER_HEARTBEAT_FILE])


def test_the_workers_heartbeat_is_in_the_instance_folder(make_app: AppFactory) -> None:
    app = make_app()
    assert worker_heartbeat(app) == Path(app.instance_path, "celery-worker.heartbeat")
    settings = production_settings(CELERY_WORKER_HEARTBEAT_FILE="/run/heartbeat")
    config = load_config("production", settings)
    assert config.CELERY_WORKER_HEARTBEAT_FILE == "/run/heartbeat"


def test_a_worker_has_a_heartbeat_from_ready_to_shutdown(heartbeat_app: Flask) -> None:
    path = worker_heartbeat(heartbeat_app)
    # As `celery worker` sends them: each sender knows the worker's Celery app.
    worker = celery_of(heartbeat_app).WorkController
    signals.worker_init.send(sender=worker)
    assert path.parent.is_dir()
    assert not path.exists()
    signals.worker_ready.send(sender=worker)
    age = heartbeat_age(path, time.time())
    assert age is not None
    assert age < 1
    signals.worker_shutdown.send(sender=worker)
    assert not path.exists()
    # A start clears the heartbeat a worker killed outright left behind.
    write_heartbeat(path, time.time())
    signals.worker_init.send(sender=worker)
    assert not path.exists()


def test_celerys_heart_writes_the_workers_heartbeat(heartbeat_app: Flask) -> None:
    path = worker_heartbeat(heartbeat_app)
    path.parent.mkdir()
    celery = celery_of(heartbeat_app)
    timer = Timer()
    # A worker's Heart, sending its events to the eager app's in-memory broker.
    with celery.connection_for_write() as connection:
        heart = Heart(timer, celery.events.Dispatcher(connection), interval=0.05)
        try:
            heart.start()
            first = float(path.read_text(encoding="ascii"))
            wait_until(
                lambda: float(path.read_text(encoding="ascii")) > first,
                5,
                "a second heartbeat",
            )
        finally:
            heart.stop()
            timer.stop()


def test_a_worker_that_cannot_write_its_heartbeat_refuses_to_start(
    make_app: AppFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="ascii")
    app = make_app(CELERY_WORKER_HEARTBEAT_FILE=str(blocker / "heartbeat"))
    refused = r"^Error: the worker cannot write its heartbeat at .*a-file/heartbeat "
    with pytest.raises(SystemExit, match=refused):
        signals.worker_init.send(sender=celery_of(app).WorkController)


def test_a_worker_whose_folder_is_read_only_refuses_to_start(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The folder exists, but nothing may be written in it (root ignores the
    # mode bits, so the write itself is made to fail as a read-only one does).
    def read_only(path: Path, _now: float) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(heartbeats, "write_heartbeat", read_only)
    app = make_app(CELERY_WORKER_HEARTBEAT_FILE=str(tmp_path / "heartbeat"))
    with pytest.raises(SystemExit, match=r"heartbeat.*: Permission denied$"):
        signals.worker_init.send(sender=celery_of(app).WorkController)


def test_only_a_worker_writes_its_heartbeat(
    make_app: AppFactory, tmp_path: Path
) -> None:
    path = tmp_path / "heartbeat"
    # `celery inspect` (and beat) load the same app; no worker answers here.
    result = import_make_celery(
        "import sys; from celery.bin.celery import main; "
        "sys.argv = ['celery', '--app', 'make_celery', 'inspect', 'ping', "
        "'--timeout', '0.2']; main()",
        APP_ENV="testing",
        CELERY_WORKER_HEARTBEAT_FILE=str(path),
    )
    assert "No nodes replied" in result.stdout + result.stderr, result.stderr
    # Nor does the web app, which runs its tasks eagerly.
    app = make_app(tables=True, CELERY_WORKER_HEARTBEAT_FILE=str(path))
    task(app, PURGE).delay()
    assert not path.exists()


def worker_alive(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["tasks", "worker-alive", *args])
    return result.exit_code, result.output


def test_worker_alive_passes_on_a_fresh_heartbeat(heartbeat_app: Flask) -> None:
    path = worker_heartbeat(heartbeat_app)
    path.parent.mkdir()
    write_heartbeat(path, time.time() - 5)
    code, output = worker_alive(heartbeat_app)
    assert code == 0, output
    assert output.startswith("worker: alive, last heartbeat 5.")


def test_worker_alive_fails_on_a_stale_or_missing_heartbeat(
    heartbeat_app: Flask,
) -> None:
    path = worker_heartbeat(heartbeat_app)
    assert worker_alive(heartbeat_app) == (1, f"worker: no heartbeat at {path}\n")
    path.parent.mkdir()
    write_heartbeat(path, time.time() - 45)
    assert worker_alive(heartbeat_app) == (
        1,
        "worker: heartbeat 45 s old, over 30 s\n",
    )
    assert worker_alive(heartbeat_app, "--max-age", "60")[0] == 0


# --- What task runs log and count -------------------------------------------------


def task_outcomes(app: Flask) -> dict[tuple[str, str], float]:
    """celery_tasks_total at `app`'s /metrics, by task and outcome."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return {
        (sample.labels["task"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
        if sample.name == "celery_tasks_total"
    }


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text`, each of which must be a JSON object."""
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def json_app(make_app: AppFactory, tmp_path: Path) -> Flask:
    """A testing app that logs JSON lines, as production does."""
    return make_app(
        tables=True,
        LOG_FORMAT="json",
        MAIL_BACKEND="file",
        MAIL_FILE_DIRECTORY=str(tmp_path / "outbox"),
    )


def test_an_eager_runs_outcome_is_at_metrics(mail_app: Flask) -> None:
    response = mail_app.test_client().post(
        f"{AUTH}/register", json={"email": "counted@example.com", "password": PASSWORD}
    )
    assert response.status_code == 201
    assert task_outcomes(mail_app) == {(WELCOME, "success"): 1}


def test_an_eager_failure_is_counted(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/missing/app.db")
    with app.app_context(), pytest.raises(OperationalError):
        task(app, PURGE).delay()
    # Kept as a result instead (as a worker does): Celery signals it.
    assert task(app, PURGE).apply(throw=False).state == "FAILURE"
    assert task_outcomes(app) == {(PURGE, "failure"): 2}


def test_without_metrics_nothing_is_counted(make_app: AppFactory) -> None:
    app = make_app(tables=True, METRICS_ENABLED=False)
    with app.app_context():
        task(app, PURGE).delay()
    [family] = metrics_of(app).tasks.collect()
    assert family.samples == []


def test_a_tasks_lines_name_it_and_the_request_that_sent_it(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    response = json_app.test_client().post(
        f"{AUTH}/register",
        json={"email": "traced@example.com", "password": PASSWORD},
        headers={"X-Request-ID": "trace-me-1"},
    )
    assert response.status_code == 201
    lines = json_lines(capsys.readouterr().err)
    [sent] = [line for line in lines if "e-mail sent" in line["event"]]
    assert sent["request_id"] == "trace-me-1"
    assert sent["task_name"] == WELCOME
    # Celery's own line about the run, too.
    [succeeded] = [line for line in lines if "succeeded in" in line["event"]]
    assert succeeded["task_id"] == sent["task_id"]
    assert succeeded["request_id"] == "trace-me-1"
    # After the task, the request's line has the request's context back.
    [request_line] = [line for line in lines if line["event"] == "request"]
    assert request_line["request_id"] == "trace-me-1"
    assert request_line["route"] == f"{AUTH}/register"
    assert "task_id" not in request_line


def test_a_request_id_that_does_not_look_like_one_is_left_out(
    json_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    purge = task(json_app, PURGE)
    capsys.readouterr()
    purge.apply_async(headers={"request_id": "job-7"})
    purge.apply_async(headers={"request_id": 'forged"\n{"level": "x"}'})
    purge.apply_async()
    lines = json_lines(capsys.readouterr().err)
    runs = [line for line in lines if "succeeded in" in line["event"]]
    assert [line.get("request_id") for line in runs] == ["job-7", None, None]


@pytest.mark.usefixtures("json_app")
def test_celerys_lines_about_a_task_name_it_outside_its_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As the worker's main process logs a message's arrival.
    data = {"id": "5d1c", "name": WELCOME}
    capsys.readouterr()
    logging.getLogger("celery.worker.strategy").info(
        LOG_RECEIVED, data, extra={"data": data}
    )
    [line] = json_lines(capsys.readouterr().err)
    assert (line["task_id"], line["task_name"]) == ("5d1c", WELCOME)
    assert line["event"] == f"Task {WELCOME}[5d1c] received"


def test_a_worker_keeps_the_apps_logging(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Celery changes in the process, put back afterwards.
    monkeypatch.setattr(Logging, "_setup", False)
    for variable in ("_MP_FORK_LOGLEVEL_", "_MP_FORK_LOGFILE_", "_MP_FORK_LOGFORMAT_"):
        monkeypatch.setenv(variable, "")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    handled = celery_of(app).log.setup_logging_subsystem(loglevel="ERROR")
    # Handled: Celery adds no handler and redirects no output either.
    assert handled
    assert root.handlers == handlers
    # LOG_LEVEL stays: no --loglevel was given on a command line.
    assert root.level == level


@pytest.mark.parametrize(
    ("source", "wins"),
    [(ParameterSource.COMMANDLINE, True), (ParameterSource.DEFAULT, False)],
)
def test_a_loglevel_given_to_the_worker_wins_over_log_level(
    source: ParameterSource, *, wins: bool
) -> None:
    root = logging.getLogger()
    level = root.level
    context = click.Context(worker_command)
    context.set_parameter_source("loglevel", source)
    try:
        with context:
            signals.setup_logging.send(sender=None, loglevel=logging.ERROR)
        assert root.level == (logging.ERROR if wins else level)
    finally:
        root.setLevel(level)


@pytest.fixture
def metrics_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PROMETHEUS_MULTIPROC_DIR, holding what a previous run left."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_4242.db").write_bytes(b"the last run's values")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    return directory


def test_the_worker_serves_its_metrics_from_a_fresh_directory(
    make_app: AppFactory, metrics_directory: Path
) -> None:
    # Port 0: any free port (the configuration asks for a real one).
    app = make_app(CELERY_METRICS_PORT=0)
    # As `celery worker` sends it: from the worker, which knows its Celery app.
    worker = celery_of(app).WorkController
    [server] = [
        found
        for _, found in signals.worker_init.send(sender=worker)
        if found is not None
    ]
    try:
        assert list(metrics_directory.glob("*.db")) == []
        # A process creates its file empty, then sizes it: no scrape fails on it.
        (metrics_directory / "counter_4243.db").write_bytes(b"")
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
        # A second worker on the port is refused in one line.
        settings = {**celery_of(app).conf, monitoring.METRICS_PORT: server.server_port}
        refused = r"cannot serve its metrics on 127\.0\.0\.1"
        with pytest.raises(SystemExit, match=refused):
            monitoring.serve_metrics(settings)
    finally:
        server.shutdown()
        server.server_close()


def test_beat_and_inspect_leave_the_workers_metrics_alone(
    make_app: AppFactory, metrics_directory: Path
) -> None:
    result = import_make_celery(
        "import make_celery",
        APP_ENV="testing",
        CELERY_METRICS_PORT="9",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_directory),
    )
    assert result.returncode == 0, result.stderr
    assert [path.name for path in metrics_directory.iterdir()] == ["counter_4242.db"]
    # Nor does a worker without a port.
    assert monitoring.serve_metrics(celery_of(make_app()).conf) is None
    assert [path.name for path in metrics_directory.iterdir()] == ["counter_4242.db"]


def test_a_pool_process_that_exits_leaves_its_counters(
    metrics_directory: Path,
) -> None:
    # (The last run's file is for the worker's start to clear: not here.)
    (metrics_directory / "counter_4242.db").unlink()
    live = metrics_directory / "gauge_livesum_4243.db"
    live.write_bytes(b"")
    counts = MmapedDict(str(metrics_directory / "counter_4243.db"))  # type: ignore[no-untyped-call]
    key = mmap_key("celery_tasks", "celery_tasks_total", ["task"], ["t"], "Runs.")
    counts.write_value(key, 3.0, 0.0)  # type: ignore[no-untyped-call]
    counts.close()  # type: ignore[no-untyped-call]
    answers = signals.worker_process_shutdown.send(sender=None, pid=4243, exitcode=0)
    assert [answer for _, answer in answers if isinstance(answer, Exception)] == []
    assert not live.exists()
    # Its counts are in the archive, and its own file is gone.
    assert not (metrics_directory / "counter_4243.db").exists()
    registry = CollectorRegistry()
    metrics.SettledFilesCollector(registry, path=str(metrics_directory))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("celery_tasks_total", {"task": "t"}) == 3


# --- Readiness --------------------------------------------------------------------


def test_readiness_reports_an_unreachable_broker(make_app: AppFactory) -> None:
    app = make_app(tables=True, CELERY_BROKER_URL="redis://127.0.0.1:9/0")
    response = app.test_client().get("/health/ready")
    # A warning, not a 503: a sign-up succeeds without its welcome e-mail, so
    # a broker blip must not take every replica out of rotation.
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["status"] == "pass"
    assert response.json["checks"]["broker"]["status"] == "warn"
    # No worker answers either; that alone would not fail the probe.
    workers = response.json["checks"]["workers"]
    assert workers["status"] == "warn"
    assert workers["error"] == "OperationalError"


def test_without_a_broker_readiness_has_no_broker_check(client: FlaskClient) -> None:
    response = client.get("/health/ready")
    assert response.json is not None
    assert "broker" not in response.json["checks"]
    assert "workers" not in response.json["checks"]


class ScriptedPings(WorkerPings):
    """WorkerPings whose workers answer (or not) as the test says, counted."""

    def __init__(self, app: Flask, answers: list[bool]) -> None:
        super().__init__(celery_of(app), timeout=0.5)
        self.answers = answers
        self.pings = 0

    def ping(self) -> bool:
        self.pings += 1
        return self.answers.pop(0)


def test_a_workers_answer_is_remembered_for_a_while(app: Flask) -> None:
    pings = ScriptedPings(app, answers=[True, True])
    assert pings() == "a worker answered 0 s ago"
    # The answered ping, 12 s later.
    pings.pinged = pings.answered = time.monotonic() - 12
    # Fresh enough: no ping.
    assert pings() == "a worker answered 12 s ago"
    assert pings.pings == 1
    pings.pinged = pings.answered = time.monotonic() - FRESH_FOR - 1
    assert pings() == "a worker answered 0 s ago"
    assert pings.pings == 2


def test_workers_that_stop_answering_fail_the_check(app: Flask) -> None:
    never = ScriptedPings(app, answers=[False])
    with pytest.raises(HealthCheckError) as raised:
        never()
    assert str(raised.value) == (
        "no worker answered a ping within 0.5 s, nor since this process started"
    )
    pings = ScriptedPings(app, answers=[True, False])
    pings()
    pings.answered = time.monotonic() - 95
    pings.pinged = pings.answered
    with pytest.raises(HealthCheckError) as raised:
        pings()
    assert str(raised.value) == (
        "no worker answered a ping within 0.5 s; the last answer was 95 s ago"
    )


def test_an_unanswered_ping_is_remembered_for_a_while(app: Flask) -> None:
    # An outage costs one ping's wait per SILENCE_FOR, not one per probe.
    pings = ScriptedPings(app, answers=[False, True])
    for _ in range(3):
        with pytest.raises(HealthCheckError, match="nor since this process"):
            pings()
    assert pings.pings == 1
    assert pings.pinged is not None
    pings.pinged -= SILENCE_FOR
    assert pings() == "a worker answered 0 s ago"
    assert pings.pings == 2


def test_a_broker_that_fails_the_ping_is_not_asked_again_at_once(
    app: Flask,
) -> None:
    class Unreachable(ScriptedPings):
        def ping(self) -> bool:
            self.pings += 1
            raise ConnectionRefusedError

    pings = Unreachable(app, answers=[])
    with pytest.raises(ConnectionRefusedError):
        pings()
    with pytest.raises(HealthCheckError, match="nor since this process"):
        pings()
    assert pings.pings == 1


def test_a_probe_does_not_wait_long_for_anothers_ping(app: Flask) -> None:
    pings = ScriptedPings(app, answers=[])
    with pings.lock, pytest.raises(HealthCheckError, match="another probe's ping"):
        pings()
    assert pings.pings == 0


def test_a_ping_no_worker_answers_ends_at_its_timeout(app: Flask) -> None:
    # Over the eager app's in-memory broker, where no worker listens.
    pings = WorkerPings(celery_of(app), timeout=0.2)
    started = time.monotonic()
    assert pings.ping() is False
    assert 0.2 <= time.monotonic() - started < 2


def test_each_app_has_its_own_celery(make_app: AppFactory) -> None:
    first, second = make_app(), make_app()
    assert isinstance(celery_of(first), Celery)
    assert celery_of(first) is not celery_of(second)
