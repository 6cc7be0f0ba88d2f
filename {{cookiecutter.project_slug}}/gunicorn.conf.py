"""Gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:application``.

Every value can be overridden on the command line or in GUNICORN_CMD_ARGS
(``GUNICORN_CMD_ARGS="--bind 127.0.0.1:8000"``), which gunicorn reads after
this file.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from gunicorn import util
from gunicorn.arbiter import Arbiter

from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    check_server_config,
    env_int,
)
from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE

CPUS = os.cpu_count() or 1
# Far beyond what helps, and a typo away from exhausting the machine's memory
# (WEB_CONCURRENCY=100000 would fork until the kernel starts killing).
MAX_WORKERS = 8 * CPUS
MAX_THREADS = 64

# A broken setting ends the start-up with one line, before any worker exists.
try:
    port = env_int(os.environ, "PORT", 8000, maximum=65535)
    # One worker per CPU with Redis; without it, state is per process: one.
    default_workers = CPUS if os.environ.get("REDIS_URL") else 1
    workers = env_int(
        os.environ, "WEB_CONCURRENCY", default_workers, maximum=MAX_WORKERS
    )
    threads = env_int(os.environ, "GUNICORN_THREADS", 4, maximum=MAX_THREADS)
except ConfigError as error:
    sys.exit(f"Error: {error.message}")

# All interfaces, as a container needs; the port comes from PORT.
bind = [f"0.0.0.0:{port}"]
# Threads keep a worker answering (/health/live included) while some of its
# requests wait on I/O, such as a database that does not answer.
worker_class = "gthread"
# Seconds: a worker silent for longer is killed and replaced; in-flight requests
# get graceful_timeout to finish on shutdown; idle keep-alive connections close.
timeout = 30
graceful_timeout = 30
keepalive = 5
# Replace each worker after about this many requests, bounding slow leaks.
max_requests = 2000
max_requests_jitter = 200
# Gunicorn 25+ opens a control socket in $HOME by default: servers sharing a
# home (tests, several services) would fight over it, and nothing here uses it.
control_socket_disable = True
# Log to stderr, where containers and process managers collect it.
accesslog = "-"
errorlog = "-"


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


def write_problem(
    client: socket.socket, status: int, reason: str, _message: str
) -> None:
    """Gunicorn's own answers to requests it cannot parse, as problem documents.

    Gunicorn refuses malformed requests (a bad header, an over-long URL) before
    the app sees them, with an HTML page quoting what it refused; this answers
    in the API's one error shape instead, and quotes nothing the client sent.
    """
    body = json.dumps(
        {
            "type": "about:blank",
            "title": reason,
            "status": status,
            "detail": "The server could not read the request.",
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {PROBLEM_MEDIA_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(client, head.encode("latin-1") + body)


# Gunicorn calls util.write_error for every request it refuses itself.
util.write_error = write_problem
