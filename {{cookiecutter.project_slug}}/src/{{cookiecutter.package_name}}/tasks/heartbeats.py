"""Heartbeat files: proof, for a healthcheck in the same container, that beat
ticks and that the worker consumes.

A process writes the time into its file while it works; ``flask tasks
beat-alive`` and ``flask tasks worker-alive`` (compose's healthchecks) fail
once the file is older than a few beats, or missing: a hung process writes
nothing, whatever its PID says.

- Beat: ``beat.HeartbeatScheduler`` writes at every tick.
- The worker: Celery's Heart sends ``heartbeat_sent`` every 2 s while the
  worker is connected to its broker; each one writes the file, in the
  instance folder (CELERY_WORKER_HEARTBEAT_FILE). The worker removes the
  file as it starts (a previous run's heartbeat is not this one's) and after
  a warm shutdown. Only ``celery worker`` sends these signals: beat, ``celery
  inspect``, the web server and eager tasks write nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import signals

# A Celery setting of this project, not Celery's own: the worker's file.
WORKER_HEARTBEAT_FILE = "worker_heartbeat_file"
# Seconds without a heartbeat before a worker counts as stuck: fifteen of
# Celery's 2 s heartbeats, room for a busy main process or a broker that
# comes back after a blink.
WORKER_MAX_AGE = 30.0


def write_heartbeat(path: Path, now: float) -> None:
    """Replace the heartbeat file atomically with the time `now`."""
    # A name of this process's own: two writers never publish a half file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_text(f"{now:.3f}\n", encoding="ascii")
    partial.replace(path)


def heartbeat_age(path: Path, now: float) -> float | None:
    """Seconds since the last heartbeat, or None when there is none to read."""
    try:
        beat = float(path.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return max(0.0, now - beat)


def worker_heartbeat_file(settings: Mapping[str, Any]) -> Path:
    return Path(settings[WORKER_HEARTBEAT_FILE])


@signals.worker_init.connect
def clear_worker_heartbeat(sender: Any, **_extra: object) -> None:
    """`celery worker` starts: no heartbeat until it is ready.

    Refuses in one line when the file cannot be written (its folder cannot
    be made, or is not writable): a worker that could never beat would be
    reported dead forever, and log an error every 2 s.
    """
    path = worker_heartbeat_file(sender.app.conf)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_heartbeat(path, time.time())
        path.unlink()
    except OSError as error:
        raise SystemExit(
            f"Error: the worker cannot write its heartbeat at {path} "
            f"(CELERY_WORKER_HEARTBEAT_FILE): {error.strerror}"
        ) from None


@signals.worker_ready.connect
def worker_ready_heartbeat(sender: Any, **_extra: object) -> None:
    """The worker consumes from now on (sent by its consumer)."""
    write_heartbeat(worker_heartbeat_file(sender.app.conf), time.time())


@signals.heartbeat_sent.connect
def worker_heartbeat(sender: Any, **_extra: object) -> None:
    """Celery's Heart beat: the worker is connected to its broker."""
    write_heartbeat(worker_heartbeat_file(sender.eventer.app.conf), time.time())


@signals.worker_shutdown.connect
def remove_worker_heartbeat(sender: Any, **_extra: object) -> None:
    """A warm shutdown is over: the worker consumes no more."""
    worker_heartbeat_file(sender.app.conf).unlink(missing_ok=True)
