"""Beat's heartbeat: proof that the scheduler is alive and ticking.

``HeartbeatScheduler`` (the configured beat_scheduler) writes the time of each
tick next to its schedule file. Beat ticks at least every beat_max_loop_interval
seconds (30), so ``flask tasks beat-alive`` (compose's healthcheck of beat)
fails once the heartbeat is older than a few ticks: a hung or dead beat sends
no periodic tasks, whatever its process says.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

from .heartbeats import write_heartbeat

# Ticks a healthy beat may miss before the check fails.
MISSED_TICKS = 3


def heartbeat_file(schedule_file: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(schedule_file)}.heartbeat")


class HeartbeatScheduler(PersistentScheduler):
    """The default persistent scheduler, writing a heartbeat at every tick."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        # `celery beat --schedule` overrides beat_schedule_filename.
        schedule = getattr(self, "schedule_filename", None)
        write_heartbeat(
            heartbeat_file(schedule or self.app.conf.beat_schedule_filename),
            time.time(),
        )
        return interval
