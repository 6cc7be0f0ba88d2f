"""``flask tasks``: run the cleanup now, check that beat or the worker is alive."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from .beat import MISSED_TICKS, heartbeat_file
from .heartbeats import WORKER_MAX_AGE, heartbeat_age, worker_heartbeat_file

tasks_cli = AppGroup(
    "tasks", help="Background jobs: cleanup, and the health of beat and the worker."
)


@tasks_cli.command("cleanup")
def cleanup() -> None:
    """Delete expired sign-ins now (beat runs this every CLEANUP_INTERVAL)."""
    from .cleanup import purge_expired  # noqa: PLC0415 - keeps the CLI light

    purged = purge_expired.run()
    click.echo(
        f"Deleted {purged['token_families']} sign-in(s); gave "
        f"{purged['idempotency_keys_given_expiry']} idempotency record(s) an expiry."
    )


def check_heartbeat(process: str, path: Path, limit: float) -> None:
    """Say how fresh `process`'s heartbeat is; exit 1 when it is stale or missing."""
    age = heartbeat_age(path, time.time())
    if age is None:
        click.echo(f"{process}: no heartbeat at {path}", err=True)
        sys.exit(1)
    if age > limit:
        click.echo(
            f"{process}: heartbeat {age:.0f} s old, over {limit:.0f} s", err=True
        )
        sys.exit(1)
    click.echo(f"{process}: alive, last heartbeat {age:.1f} s ago")


@tasks_cli.command("beat-alive")
@click.option(
    "--max-age",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds a heartbeat stays fresh (default: three of beat's ticks).",
)
def beat_alive(max_age: float | None) -> None:
    """Exit 0 when beat ticked recently, 1 otherwise (a container healthcheck)."""
    settings = current_app.extensions["celery"].conf
    limit = max_age or MISSED_TICKS * float(settings.beat_max_loop_interval)
    check_heartbeat("beat", heartbeat_file(settings.beat_schedule_filename), limit)


@tasks_cli.command("worker-alive")
@click.option(
    "--max-age",
    type=click.FloatRange(min=1),
    default=WORKER_MAX_AGE,
    show_default=True,
    help="Seconds a heartbeat stays fresh.",
)
def worker_alive(max_age: float) -> None:
    """Exit 0 when the worker beside this command consumes, 1 otherwise (a
    container healthcheck): it beats every 2 s while connected to its broker."""
    settings = current_app.extensions["celery"].conf
    check_heartbeat("worker", worker_heartbeat_file(settings), max_age)
