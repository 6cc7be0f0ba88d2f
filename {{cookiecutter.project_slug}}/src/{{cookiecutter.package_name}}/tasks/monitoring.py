"""What task runs log and count, in whichever process runs them.

- Logs: ``celery worker`` and ``celery beat`` keep the app's logging (one JSON
  or console line per event: observability/logs.py) instead of Celery's own.
  Every line logged while a task runs carries its ``task_id``, ``task_name``
  and the ``request_id`` of the request that sent it, Celery's "Task ...
  succeeded" line included. The level is LOG_LEVEL; a ``--loglevel`` given on
  the command line wins.
- Outcomes: ``celery_tasks_total{task, outcome}`` counts each run's success,
  failure, retry, or revocation, in the metrics of the app that ran it: the
  web app's own when tasks run eagerly, the worker's otherwise.
- The worker's metrics: with CELERY_METRICS_PORT, the worker's main process
  empties PROMETHEUS_MULTIPROC_DIR, where each of its pool processes writes
  its values, and serves their sum on CELERY_METRICS_HOST (127.0.0.1). Only
  ``celery worker`` does: beat and ``celery inspect`` import the same app and
  leave the directory alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any
from wsgiref.simple_server import WSGIServer

import click
import structlog
from celery import Task, signals
from click.core import ParameterSource
from flask import Flask
from prometheus_client import CollectorRegistry, start_http_server
from structlog.typing import EventDict, WrappedLogger

from ..observability import metrics
from ..observability.requests import SANE_REQUEST_ID

# The message header naming the request that sent a task (FlaskTask.apply_async).
REQUEST_ID_HEADER = "request_id"
# Celery settings of this project, not Celery's own: the worker's metrics server.
METRICS_PORT = "worker_metrics_port"
METRICS_HOST = "worker_metrics_host"

logger = logging.getLogger(__name__)
# The log context each running task replaced, innermost last: an eager task
# runs inside a request (or another task), whose context comes back after it.
outer_contexts: ContextVar[tuple[dict[str, Any], ...]] = ContextVar(
    "outer_contexts", default=()
)


# --- Logs -------------------------------------------------------------------------


def given_on_command_line(parameter: str) -> bool:
    """The running Celery command got `parameter` from its user, not a default."""
    context = click.get_current_context(silent=True)
    if context is None:
        return False
    source = context.get_parameter_source(parameter)
    return source not in {None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP}


@signals.setup_logging.connect
def keep_app_logging(loglevel: int | None = None, **_extra: object) -> None:
    """Celery configures no logging when this receiver exists: the handler
    create_app installed stays, and Celery redirects no output to it."""
    # Celery's own default, WARNING, would hide the worker's INFO lines.
    if loglevel and given_on_command_line("loglevel"):
        logging.getLogger().setLevel(loglevel)


def sending_request_id(task: Task[Any, Any]) -> str | None:
    """The id of the request that sent the running task, when it looks like one."""
    request = task.request
    # A worker makes the message's headers attributes of the request; an
    # eager run keeps them in its headers.
    headers = getattr(request, "headers", None) or {}
    found = getattr(request, REQUEST_ID_HEADER, None) or headers.get(REQUEST_ID_HEADER)
    if isinstance(found, str) and SANE_REQUEST_ID.fullmatch(found):
        return found
    return None


@signals.task_prerun.connect
def bind_task_context(task: Task[Any, Any], task_id: str, **_extra: object) -> None:
    """Every line logged until the task ends names it and its request."""
    outer_contexts.set((*outer_contexts.get(), structlog.contextvars.get_contextvars()))
    context = {"task_id": task_id, "task_name": task.name}
    if (request_id := sending_request_id(task)) is not None:
        context["request_id"] = request_id
    structlog.contextvars.bind_contextvars(**context)


@signals.task_postrun.connect
def restore_log_context(**_extra: object) -> None:
    """Back to the context the task found (a request's, or none in a worker)."""
    saved = outer_contexts.get()
    outer_contexts.set(saved[:-1])
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**(saved[-1] if saved else {}))


def celery_task_fields(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """Celery's lines about a task name it, outside its run too ("received")."""
    record = event_dict.get("_record")
    if record is None or not record.name.startswith("celery."):
        return event_dict
    data = getattr(record, "data", None)
    if isinstance(data, Mapping) and "id" in data and "name" in data:
        event_dict.setdefault("task_id", data["id"])
        event_dict.setdefault("task_name", data["name"])
    return event_dict


# --- Outcomes ---------------------------------------------------------------------


def count_outcome(task: Task[Any, Any], outcome: str) -> None:
    """Count one run of `task` in the metrics of its app (METRICS_ENABLED)."""
    app: Flask | None = getattr(task, "flask_app", None)
    if app is not None and (found := metrics.counting(app)):
        found.tasks.labels(task.name, outcome).inc()


@signals.task_success.connect
def count_success(sender: Task[Any, Any], **_extra: object) -> None:
    count_outcome(sender, "success")


@signals.task_failure.connect
def count_failure(sender: Task[Any, Any], **_extra: object) -> None:
    """Raised, or in a worker: hard time limit, or a pool process lost for good."""
    count_outcome(sender, "failure")


@signals.task_retry.connect
def count_retry(sender: Task[Any, Any], **_extra: object) -> None:
    count_outcome(sender, "retry")


@signals.task_revoked.connect
def count_revoked(sender: Task[Any, Any], **_extra: object) -> None:
    """Revoked, or expired before a worker ran it (the worker's main process)."""
    count_outcome(sender, "revoked")


# --- The worker's metrics ---------------------------------------------------------


def serve_metrics(settings: Mapping[str, Any]) -> WSGIServer | None:
    """A fresh PROMETHEUS_MULTIPROC_DIR and a server of its sum, with a port set.

    Refuses in one line when the port cannot be had.
    """
    port: int | None = settings.get(METRICS_PORT)
    directory = metrics.multiprocess_directory()
    # (The configuration refuses a port without the directory.)
    if port is None or directory is None:
        return None
    host: str = settings[METRICS_HOST]
    # The last run's values are not this run's (counters restart at zero).
    metrics.empty_directory(directory)
    registry = CollectorRegistry(auto_describe=True)
    metrics.SettledFilesCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise SystemExit(
            f"Error: the worker cannot serve its metrics on {host} port {port} "
            f"(CELERY_METRICS_HOST, CELERY_METRICS_PORT): {error.strerror}"
        ) from None
    logger.info("worker metrics on %s port %s at /metrics", host, server.server_port)
    return server


@signals.worker_init.connect
def start_metrics_server(sender: Any, **_extra: object) -> WSGIServer | None:
    """`celery worker`'s main process, before its pool processes start."""
    return serve_metrics(sender.app.conf)


@signals.worker_process_shutdown.connect
def forget_pool_process(pid: int, **_extra: object) -> None:
    """A pool process exits: its live gauges go, its counts move to the archive.

    Sent by the exiting process itself, so not by one killed outright: its
    file stays (and is counted) until the worker's next start empties it.
    """
    metrics.worker_exited(pid)
