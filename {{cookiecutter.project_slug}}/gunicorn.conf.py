"""Gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:application``.

Every value can be overridden on the command line or in GUNICORN_CMD_ARGS
(``GUNICORN_CMD_ARGS="--bind 127.0.0.1:8000"``), which gunicorn reads after
this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from http import HTTPStatus
from pathlib import Path

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

# Metrics: every worker writes its values into one directory, which /metrics
# adds up (observability/metrics.py). prometheus_client reads the variable
# when it is first imported, by the app's package below, so it is set first:
# PROMETHEUS_MULTIPROC_DIR when given (emptied at start), else a directory of
# this server's own, made by on_starting (not by --check-config) and removed
# when it exits. Gunicorn runs this file again on SIGHUP: the mark says whose
# the directory is.
OWN_METRICS_MARK = "GUNICORN_OWN_METRICS_DIRECTORY"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # unset, or set empty
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[OWN_METRICS_MARK] = str(
        Path(tempfile.gettempdir(), f"metrics-{uuid.uuid4().hex}")
    )

from {{ cookiecutter.package_name }}.config import (  # noqa: E402 - after the variable
    LOG_LEVELS,
    ConfigError,
    check_server_config,
    env_choice,
    env_int,
)
from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE  # noqa: E402
from {{ cookiecutter.package_name }}.observability import logs, metrics  # noqa: E402
from {{ cookiecutter.package_name }}.resilience.queueing import (  # noqa: E402
    QueueTimedWorker,
)

# The machine's CPUs. A container's CPU quota (docker --cpus, Kubernetes
# resources.limits.cpu) does not change this count: set WEB_CONCURRENCY there.
CPUS = os.cpu_count() or 1
# Far beyond what helps, and a typo away from exhausting the machine's memory
# (WEB_CONCURRENCY=100000 would fork until the kernel starts killing).
MAX_WORKERS = 8 * CPUS
MAX_THREADS = 64

# A broken setting ends the start-up with one line, before any worker exists.
try:
    port = env_int(os.environ, "PORT", 8000, maximum=65535)
    # Worker processes: WEB_CONCURRENCY, else one per CPU with REDIS_URL and
    # one without. Without REDIS_URL the rate-limit counters, breaker state,
    # idempotency keys and cache live in process memory, which is correct for
    # one process only, so on_starting refuses more. One per CPU is enough:
    # threads, not processes, cover the waits on I/O (below).
    default_workers = CPUS if os.environ.get("REDIS_URL") else 1
    workers = env_int(
        os.environ, "WEB_CONCURRENCY", default_workers, maximum=MAX_WORKERS
    )
    threads = env_int(os.environ, "GUNICORN_THREADS", 4, maximum=MAX_THREADS)
    loglevel = env_choice(os.environ, "LOG_LEVEL", "info", LOG_LEVELS)
except ConfigError as error:
    sys.exit(f"Error: {error.message}")

# All interfaces, as a container needs; the port comes from PORT.
bind = [f"0.0.0.0:{port}"]
# A view holds its thread while it waits on the database or an upstream. A
# sync worker has one thread: one slow call stops the process, /health/live
# included. A gthread worker's other threads keep answering. Measured with
# `make bench-workers` (benchmarks/workers.py; the figures are in README.md,
# "Gunicorn"): on a view that waits 50 ms, 2 processes x 4 threads serve about
# four times what 2 sync processes do, and more than 2 x CPUs + 1 sync ones.
# 8 threads double it again, but each thread may hold a database connection:
# 4 stay within SQLAlchemy's default pool of 5 per process and leave room in
# PostgreSQL's default 100 connections for several replicas. reuse_port would
# spread kept-alive connections evenly, but a recycled worker then resets the
# connections queued on its own socket, so it stays off.
#
# The worker is gthread with a thread pool that notes how long each request
# waited for a thread (resilience/queueing.py): backpressure sheds by that
# wait. With another worker class (-k) the app sees no such wait and sheds
# only when a request outwaits its budget for an in-flight slot.
worker_class = QueueTimedWorker
# A worker whose main loop is silent this long is killed and replaced. The
# loop beats while request threads wait, so this catches a stuck process, not
# a slow request: the app's own deadlines bound those (DATABASE_STATEMENT_TIMEOUT,
# PRICING_TIMEOUT, HEALTH_CHECK_TIMEOUT).
timeout = 30
# On SIGTERM the master closes the listening socket, and each worker finishes
# the requests it has for up to this long, then exits (tests/test_gunicorn.py
# shows it). 25 s ends within the 30 s Kubernetes allows by default before
# SIGKILL; docker stop allows 10 s unless given --stop-timeout (compose:
# stop_grace_period), so give containers 30.
graceful_timeout = 25
# Seconds an idle kept-alive connection stays open: longer than the idle
# timeout of the load balancers usually in front (AWS ALB's is 60 s), so that
# they close idle connections, not Gunicorn (a connection closed just as the
# balancer reuses it is a 502). An idle connection waits in the worker's
# poller, not in a thread.
keepalive = 75
# Replace each worker after about this many requests, bounding slow leaks; the
# jitter keeps workers from restarting at the same moment. A worker is
# replaced as on SIGTERM: its requests finish first.
max_requests = 2000
max_requests_jitter = 200
# The peers Gunicorn lets set the scheme (X-Forwarded-Proto and the like) and
# SCRIPT_NAME: none unless FORWARDED_ALLOW_IPS says. The app's ProxyFix reads
# X-Forwarded-For and -Proto from exactly TRUSTED_PROXIES hops (security.py),
# so one place decides, and with TRUSTED_PROXIES=0 (the default) no forwarded
# header counts, from anyone. Gunicorn's own default, 127.0.0.1 and ::1,
# would let any process on the host (or in the pod) set the scheme even so.
# Gunicorn reads FORWARDED_ALLOW_IPS itself only when this file says nothing,
# hence it is read here; on_starting refuses it with TRUSTED_PROXIES=0. (A
# Unix socket peer is always trusted by Gunicorn: bind to TCP, as here.)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "")
# Gunicorn 25+ opens a control socket in $HOME by default: servers sharing a
# home (tests, several services) would fight over it, and nothing here uses it.
control_socket_disable = True
# Log to stderr, where containers and process managers collect it, in the
# app's format (JSON lines in production: observability/logs.py). No access
# log: the app writes a line per request, with its id, route and user
# (``--access-logfile -`` adds Gunicorn's, in the same format).
errorlog = "-"
logger_class = logs.GunicornLogger


def on_starting(server: Arbiter) -> None:
    """Refuse unsafe or invalid settings in one line before any worker starts."""
    # The thread count in force, whichever way it was set (GUNICORN_THREADS,
    # --threads, GUNICORN_CMD_ARGS): the app leaves one free (MAX_IN_FLIGHT).
    os.environ["GUNICORN_THREADS"] = str(server.cfg.threads)
    try:
        config = check_server_config()
    except ConfigError as error:
        sys.exit(f"Error: {error.message}")
    if server.num_workers > 1 and not config.REDIS_URL:
        sys.exit(
            f"Error: {server.num_workers} workers need REDIS_URL: without it each "
            "worker keeps its own rate-limit counters, breaker state, idempotency "
            "keys and cache, which silently disagree. Set REDIS_URL, or run one "
            "worker (WEB_CONCURRENCY=1)."
        )
    # A fresh count for every server start, not the last run's.
    metrics.empty_directory(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if server.cfg.forwarded_allow_ips and not config.TRUSTED_PROXIES:
        trusted = ",".join(server.cfg.forwarded_allow_ips)
        sys.exit(
            f"Error: FORWARDED_ALLOW_IPS={trusted} trusts proxies to report the "
            "scheme, but TRUSTED_PROXIES=0 says no proxy is in front. Set "
            "TRUSTED_PROXIES to the number of proxies that append X-Forwarded-For, "
            "or unset FORWARDED_ALLOW_IPS."
        )


def child_exit(_server: Arbiter, worker: Worker) -> None:
    """A worker is gone: its counts move to the archive, its live gauges go."""
    metrics.worker_exited(worker.pid)


def on_exit(_server: Arbiter) -> None:
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.environ.get(OWN_METRICS_MARK) == directory:
        shutil.rmtree(directory, ignore_errors=True)


def write_problem(
    client: socket.socket, status: int, reason: str, _message: str
) -> None:
    """Gunicorn's own answers to requests it cannot parse, as problem documents.

    Gunicorn refuses malformed requests (a bad header, an over-long URL) before
    the app sees them, with an HTML page quoting what it refused; this answers
    in the API's one error shape instead, and quotes nothing the client sent.
    """
    # An id of its own: the client's X-Request-ID was not read.
    request_id = uuid.uuid4().hex
    # The status's own phrase: Gunicorn passes "Bad Request" with its 501s.
    with contextlib.suppress(ValueError):
        reason = HTTPStatus(status).phrase
    body = json.dumps(
        {
            "type": "about:blank",
            "title": reason,
            "status": status,
            "detail": "The server could not read the request.",
            "request_id": request_id,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {PROBLEM_MEDIA_TYPE}\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    util.write_nonblock(client, head.encode("latin-1") + body)


# Gunicorn calls util.write_error for every request it refuses itself.
util.write_error = write_problem
