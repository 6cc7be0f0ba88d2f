"""``flask tasks``: run the cleanup now, check that beat is alive."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from .beat import MISSED_TICKS, heartbeat_age, heartbeat_file

tasks_cli = AppGroup("tasks", help="Background jobs: cleanup and beat's health.")


@tasks_cli.command("cleanup")
def cleanup() -> None:
    """Delete expired sign-ins now (beat runs this every CLEANUP_INTERVAL)."""
    from .cleanup import purge_expired  # noqa: PLC0415 - keeps the CLI light

    purged = purge_expired.run()
    click.echo(
        f"Deleted {purged['token_families']} sign-in(s); gave "
        f"{purged['idempotency_keys_given_expiry']} idempotency record(s) an expiry."
    )


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
    schedule = Path(settings.beat_schedule_filename)
    limit = max_age or MISSED_TICKS * float(settings.beat_max_loop_interval)
    age = heartbeat_age(heartbeat_file(schedule), time.time())
    if age is None:
        click.echo(f"beat: no heartbeat at {heartbeat_file(schedule)}", err=True)
        sys.exit(1)
    if age > limit:
        click.echo(f"beat: heartbeat {age:.0f} s old, over {limit:.0f} s", err=True)
        sys.exit(1)
    click.echo(f"beat: alive, last heartbeat {age:.1f} s ago")
