"""Background jobs: a Celery app bound to the Flask app, and its tasks.

``celery_init_app`` follows the Flask documentation's pattern: one Celery app
per Flask app, configured from ``app.config["CELERY"]``, whose tasks run inside
an app context. The broker is CELERY_BROKER_URL, else REDIS_URL; with neither
(development and tests), a task runs at once in the process that sends it, and
its exceptions reach the caller. Production refuses to start without a broker.

- ``accounts``: the welcome e-mail, sent when an account is created.
- ``cleanup``: the periodic purge of expired sign-ins, on beat's schedule.
- ``mail``: the console, file and SMTP transports the e-mails go through.
- ``beat``: the scheduler's heartbeat, checked by ``flask tasks beat-alive``.
- ``heartbeats``: the heartbeat files; the worker writes its own, checked by
  ``flask tasks worker-alive``.
- ``workers``: the readiness check that a worker answered lately.
- ``monitoring``: the task context of log lines, outcome counts, and the
  worker's metrics server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from celery import Celery, Task
from celery.exceptions import Retry
{%- if cookiecutter.use_opentelemetry == "yes" %}
from celery.utils import uuid
{%- endif %}
from flask import Flask, current_app, has_request_context

from ..auth import user_registered
from ..health import add_check
from ..models import User
from ..observability import logs, request_id
{%- if cookiecutter.use_opentelemetry == "yes" %}, tracing{% endif %}
from . import accounts, cleanup, heartbeats, monitoring
from .commands import tasks_cli
from .workers import WorkerPings

EXTENSION_KEY = "celery"

logger = logging.getLogger(__name__)


def celery_settings(app: Flask) -> dict[str, Any]:
    """``app.config["CELERY"]`` completed with what the other settings decide."""
    config = app.config
    broker = config["CELERY_BROKER_URL"]
    visibility = config["CELERY_VISIBILITY_TIMEOUT"]
    keys = f"{config['REDIS_KEY_PREFIX']}:celery:"
    schedule_file = Path(app.instance_path, config["CELERY_BEAT_SCHEDULE_FILE"])
    worker_heartbeat = Path(app.instance_path, config["CELERY_WORKER_HEARTBEAT_FILE"])
    settings: dict[str, Any] = {
        **config["CELERY"],
        # Eager without a broker; memory:// keeps kombu from guessing localhost.
        "broker_url": broker or "memory://localhost/",
        # Results, for the tasks that keep one, in Redis; none without it.
        "result_backend": config["REDIS_URL"],
        "task_always_eager": broker is None,
        # Eager tasks raise in the caller, as a worker's would be recorded.
        "task_eager_propagates": True,
        "task_soft_time_limit": config["CELERY_TASK_SOFT_TIME_LIMIT"],
        "task_time_limit": config["CELERY_TASK_TIME_LIMIT"],
        "task_default_queue": config["REDIS_KEY_PREFIX"],
        # Pings and other control commands reach this service's workers only:
        # on a shared RabbitMQ, the default ("celery") reaches every app's.
        "control_exchange": config["REDIS_KEY_PREFIX"],
        # And worker events (heartbeats, gossip) stay within the service.
        "event_exchange": f"{config['REDIS_KEY_PREFIX']}.events",
        # AMQP: a connection that goes silent (a frozen proxy, a stopped
        # broker) is found dead after two missed 10 s heartbeats, not 120 s
        # ones; until then the worker consumes nothing, yet its own heartbeat
        # (flask tasks worker-alive) would still be written.
        "broker_heartbeat": 10,
        # Redis: a task no worker acknowledged within the visibility timeout
        # goes back to the queue; workers look for such tasks every few
        # seconds (kombu's default look is every 100 s).
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": keys,
            # A Redis that accepts and never answers holds a sign-up about 2 s
            # (above the 1 s BRPOP poll of the workers, which share it).
            "socket_connect_timeout": 1,
            "socket_timeout": 2,
        },
        "result_backend_transport_options": {"global_keyprefix": keys},
        "beat_schedule": {
            "purge-expired-sign-ins": {
                # By name: touching a task here would bind it to this Celery
                # before its settings are in (acks_late would stay off).
                "task": f"{cleanup.__name__}.purge_expired",
                "schedule": float(config["CLEANUP_INTERVAL"]),
            },
        },
        "beat_scheduler": f"{__package__}.beat:HeartbeatScheduler",
        "beat_schedule_filename": str(schedule_file),
        # Beat wakes at least this often (seconds), so its heartbeat stays fresh.
        "beat_max_loop_interval": 30,
        # Where `celery worker` serves its metrics (tasks/monitoring.py).
        monitoring.METRICS_PORT: config["CELERY_METRICS_PORT"],
        monitoring.METRICS_HOST: config["CELERY_METRICS_HOST"],
        # Where `celery worker` writes its heartbeat (tasks/heartbeats.py).
        heartbeats.WORKER_HEARTBEAT_FILE: str(worker_heartbeat),
    }
    if config["CELERY_WORKER_CONCURRENCY"] is not None:
        settings["worker_concurrency"] = config["CELERY_WORKER_CONCURRENCY"]
    return settings


def celery_init_app(app: Flask) -> Celery:
    """The Celery app of `app`: its tasks run inside `app`'s context."""

    class FlaskTask(Task):  # type: ignore[type-arg]
        # The app whose context the task runs in, and whose metrics count it.
        flask_app: ClassVar[Flask] = app

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

        def apply(self, *args: Any, **options: Any) -> Any:
            """Run at once (eagerly). Celery signals no outcome for an error
            that reaches the caller (task_eager_propagates): counted here."""
            try:
                return super().apply(*args, **options)
            except Retry:
                monitoring.count_outcome(self, "retry")
                raise
            except Exception:
                monitoring.count_outcome(self, "failure")
                raise

        def apply_async(
            self,
            args: Any = None,
            kwargs: Any = None,
            *positional: Any,
            **options: Any,
        ) -> Any:
            # The request that sends a task names it in the task's logs.
            if has_request_context():
                headers = options.setdefault("headers", {})
                headers.setdefault(monitoring.REQUEST_ID_HEADER, request_id())
{%- if cookiecutter.use_opentelemetry == "yes" %}
            task_id = options.setdefault("task_id", uuid())
            try:
                return super().apply_async(args, kwargs, *positional, **options)
            except Exception as error:
                tracing.end_failed_send(self.name, task_id, error)
                raise
{%- else %}
            return super().apply_async(args, kwargs, *positional, **options)
{%- endif %}

    celery_app: Celery = Celery(app.import_name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_settings(app))
    celery_app.set_default()
    app.extensions[EXTENSION_KEY] = celery_app
    return celery_app


def celery_of(app: Flask) -> Celery:
    """The Celery app bound to `app` by init_app."""
    found: Celery = app.extensions[EXTENSION_KEY]
    return found


def check_broker(app: Flask) -> None:
    """The broker accepts a connection (readiness, when one is configured)."""
    with celery_of(app).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def welcome(user: User, **_extra: object) -> None:
    """Queue the welcome e-mail of a new account (sent after its commit)."""
    # The task of this app's Celery (tests run several apps in one process).
    task = celery_of(current_app).tasks[accounts.send_welcome_email.name]
    try:
        task.delay(user.id)
    except Exception:
        # A broker that is down (or, running eagerly, a mail server) must not
        # fail the sign-up that already happened.
        logger.warning(
            "could not queue (or, eagerly, send) the welcome e-mail of user %s",
            user.id,
            exc_info=True,
        )


def init_app(app: Flask) -> Celery:
    """Bind Celery to `app`, send welcome e-mails, add the broker and workers
    checks."""
    celery_app = celery_init_app(app)
    logs.add_processor(monitoring.celery_task_fields)
    user_registered.connect(welcome)
    if app.config["CELERY_BROKER_URL"]:
        # Not critical: a sign-up still succeeds (its welcome e-mail is not
        # queued, and that is logged), so a broker blip must not take every
        # replica out of rotation (health/checks.py).
        add_check(app, "broker", lambda: check_broker(app), critical=False)
        # Tasks wait in the broker while no worker runs: a warning, not a 503.
        # Its whole HEALTH_CHECK_TIMEOUT: a ping over Redis takes a second at
        # least when no worker answers, and one without an answer is not
        # sent again for SILENCE_FOR seconds (workers.py).
        timeout = app.config["HEALTH_CHECK_TIMEOUT"]
        pings = WorkerPings(celery_app, timeout / 2)
        add_check(app, "workers", pings, critical=False, timeout=timeout)
    app.cli.add_command(tasks_cli)
    return celery_app


__all__ = ["celery_init_app", "celery_of", "init_app"]
