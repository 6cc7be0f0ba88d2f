"""Background jobs without a broker: settings, the welcome e-mail, the cleanup,
beat's heartbeat and the request id (tests/test_worker.py runs a real worker)."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Retry
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from fake_smtp import smtp_server
from {{ cookiecutter.package_name }}.config import ConfigError, load_config
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import TokenFamily, User
from {{ cookiecutter.package_name }}.models.base import utcnow
from {{ cookiecutter.package_name }}.resilience import redis_store
from {{ cookiecutter.package_name }}.tasks import (
    RequestIdFilter,
    accounts,
    celery_of,
    cleanup,
    request_id,
)
from {{ cookiecutter.package_name }}.tasks.beat import (
    HeartbeatScheduler,
    heartbeat_file,
    write_heartbeat,
)

from conftest import (
    PASSWORD,
    PROJECT,
    AppFactory,
    RedisTarget,
    add_account,
    production_settings,
)

AUTH = "/api/v1/auth"
PACKAGE = "{{ cookiecutter.package_name }}"


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
    # Each service (and each test app) has a queue of its own.
    assert settings.task_default_queue == app.config["REDIS_KEY_PREFIX"]


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
        ({"CLEANUP_INTERVAL": "1"}, "CLEANUP_INTERVAL"),
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


# --- Request ids and readiness ----------------------------------------------------


def test_a_sane_request_id_is_kept_and_others_are_replaced(app: Flask) -> None:
    with app.test_request_context(headers={"X-Request-ID": "req-42.a:b"}):
        assert request_id() == "req-42.a:b"
    with app.test_request_context(headers={"X-Request-ID": "evil <script>"}):
        made = request_id()
        assert made != "evil <script>"
        assert len(made) == 32
        assert request_id() == made  # one per request
    with app.test_request_context():
        assert len(request_id()) == 32


def test_the_sending_request_names_the_task_in_its_logs(mail_app: Flask) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.INFO)
    handler.addFilter(RequestIdFilter())
    task_logger = logging.getLogger(accounts.__name__)
    task_logger.addHandler(handler)
    level = task_logger.level
    task_logger.setLevel(logging.INFO)
    try:
        response = mail_app.test_client().post(
            f"{AUTH}/register",
            json={"email": "traced@example.com", "password": PASSWORD},
            headers={"X-Request-ID": "trace-me-1"},
        )
    finally:
        task_logger.removeHandler(handler)
        task_logger.setLevel(level)
    assert response.status_code == 201
    sent = [record for record in records if "e-mail sent" in record.getMessage()]
    assert [record.request_id for record in sent] == ["trace-me-1"]  # type: ignore[attr-defined]


def test_a_log_line_outside_a_task_has_no_request_id() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "line", None, None)
    assert RequestIdFilter().filter(record)
    assert record.request_id == "-"  # type: ignore[attr-defined]


def test_readiness_reports_an_unreachable_broker(make_app: AppFactory) -> None:
    app = make_app(tables=True, CELERY_BROKER_URL="redis://127.0.0.1:9/0")
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["broker"]["status"] == "fail"


def test_without_a_broker_readiness_has_no_broker_check(client: FlaskClient) -> None:
    response = client.get("/health/ready")
    assert response.json is not None
    assert "broker" not in response.json["checks"]


def test_each_app_has_its_own_celery(make_app: AppFactory) -> None:
    first, second = make_app(), make_app()
    assert isinstance(celery_of(first), Celery)
    assert celery_of(first) is not celery_of(second)
