"""Prometheus metrics: what the service did, by route template, never by raw path.

Labels take bounded values only: the method (the standard ones, else
"other"), the route's template (``/api/v1/items/<int:item_id>``, or
"unmatched" for any path no route serves), the status code, and names from
the configuration (policies, breakers, tasks). A thousand distinct 404s add
no series.

Under Gunicorn each worker is a process of its own: gunicorn.conf.py points
PROMETHEUS_MULTIPROC_DIR at a directory emptied at every server start, each
worker writes its values there, and /metrics adds up every worker's, the
dead ones' included (a counter never goes back when a worker is replaced).
A dead worker's counts move into one archive file per kind, so the files a
scrape reads stay as many as the live workers, however often they recycle
(max_requests).
Without it (``flask run``, tests), values live in the app's own registry.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ..resilience import breakers_of

EXTENSION_KEY = "metrics"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
)
UNMATCHED_ROUTE = "unmatched"
# Seconds: from a cached read (a few ms) to the longest deadline (30 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BREAKER_STATES = ("closed", "half-open", "open")
# The files of dead processes' values, summed: counter_archive.db, ...
ARCHIVE = "archive"
ARCHIVED_KINDS = ("counter", "histogram")
LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


class Metrics:
    """The app's metrics, created on `registry` (the app's own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "http_requests",
            "Requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival in the app to its answer.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rate_limited = Counter(
            "rate_limit_rejections",
            "Requests refused with 429, by the policy that refused them.",
            ["policy"],
            registry=registry,
        )
        self.load_shed = Counter(
            "load_shed",
            "Requests refused with 503 because they waited too long for a thread or "
            'a slot (route "before-routing": shed before the app routed them).',
            ["route"],
            registry=registry,
        )
        self.idempotent_replays = Counter(
            "idempotent_replays",
            "Answers replayed for a repeated Idempotency-Key.",
            ["route"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "circuit_breaker_transitions",
            "Circuit breaker state changes, by breaker and new state.",
            ["breaker", "state"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "cache_lookups",
            "Cache reads, by result (hit or miss).",
            ["result"],
            registry=registry,
        )
        # Per process; /metrics shows the lowest of the live workers' values.
        self.health_checks = Gauge(
            "health_check_passing",
            "1 if the readiness check passed when last run, 0 if it failed or warned.",
            ["check"],
            multiprocess_mode="livemin",
            registry=registry,
        )
{%- if cookiecutter.use_celery == "yes" %}
        self.tasks = Counter(
            "celery_tasks",
            "Background task runs, by task and outcome.",
            ["task", "outcome"],
            registry=registry,
        )
{%- endif %}


class BreakerStates(Collector):
    """circuit_breaker_state: read from the breakers (Redis when shared) on scrape."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    @staticmethod
    def family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "circuit_breaker_state",
            "1 for each breaker's current state (closed, half-open, open), else 0.",
            labels=["breaker", "state"],
        )

    def describe(self) -> Iterator[Metric]:
        """The metric's name and type, without reading the breakers."""
        yield self.family()

    def collect(self) -> Iterator[Metric]:
        family = self.family()
        for name, report in breakers_of(self.app).report().items():
            for state in BREAKER_STATES:
                family.add_metric([name, state], 1.0 if report.state == state else 0.0)
        yield family


class SettledFilesCollector(MultiProcessCollector):
    """MultiProcessCollector, without the files that hold nothing yet.

    A process creates its file empty and sizes it a moment later: a scrape in
    between, or after the process died in between, would fail as a whole
    (prometheus/client_python#1199).
    """

    def collect(self) -> Iterable[Metric]:
        with directory_lock(self._path, exclusive=False):
            files = [
                str(path) for path in Path(self._path).glob("*.db") if has_data(path)
            ]
            found: Iterable[Metric] = self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return found


@contextmanager
def directory_lock(directory: str | Path, *, exclusive: bool) -> Iterator[None]:
    """Scrapes (shared) and archiving (exclusive) exclude each other, so that a
    scrape counts a dead process's values once: in its file or in the archive."""
    with Path(directory, LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def archive(directory: Path, pid: int) -> None:
    """Add dead process `pid`'s counters and histograms to the archive files,
    and remove its own: the directory holds a file per live process, plus
    one per kind for all the dead, however many workers come and go."""
    for kind in ARCHIVED_KINDS:
        dead = directory / f"{kind}_{pid}.db"
        if not has_data(dead):
            dead.unlink(missing_ok=True)
            continue
        try:
            # Read whole (the reader is lazy), before anything is written.
            values = list(MmapedDict.read_all_values_from_file(str(dead)))  # type: ignore[no-untyped-call]
        except Exception:  # noqa: BLE001 - whatever a damaged file raises
            # Unreadable, it would fail every scrape: its counts are lost.
            logger.warning("removed unreadable metrics file %s", dead.name)
            dead.unlink()
            continue
        archived = MmapedDict(str(directory / f"{kind}_{ARCHIVE}.db"))  # type: ignore[no-untyped-call]
        try:
            for key, value, timestamp, _ in values:
                total, latest = archived.read_value(key)  # type: ignore[no-untyped-call]
                archived.write_value(key, total + value, max(latest, timestamp))  # type: ignore[no-untyped-call]
        finally:
            archived.close()  # type: ignore[no-untyped-call]
        dead.unlink()


def has_data(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:  # a dead process's live gauges, just removed
        return False


def multiprocess_directory() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, when this process shares metrics with others."""
    return os.environ.get(MULTIPROCESS_VARIABLE) or None


def exposition_registry(app: Flask) -> CollectorRegistry:
    """What /metrics reports: every process's values, or this app's own."""
    directory = multiprocess_directory()
    if directory is None:
        return metrics_of(app).registry
    registry = CollectorRegistry(auto_describe=True)
    SettledFilesCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(BreakerStates(app))
    return registry


def empty_directory(directory: str | Path) -> None:
    """Create `directory`, or remove the values a previous server left in it.

    Stops the process in one line when the directory cannot be had.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    except OSError as error:
        raise SystemExit(
            f"Error: {MULTIPROCESS_VARIABLE}={directory} cannot hold the metrics "
            f"of the server's processes: {error.strerror}"
        ) from None


def worker_exited(pid: int) -> None:
    """Drop a dead process's live gauges; its counts move to the archive.

    A file it cannot write (a full disk) is logged, not raised: Gunicorn's
    master runs this, and would stop on an error.
    """
    directory = multiprocess_directory()
    if directory is None:
        return
    try:
        with directory_lock(directory, exclusive=True):
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            archive(Path(directory), pid)
    except OSError as error:  # a full disk, a directory removed by hand
        logger.error("could not archive the metrics of process %s: %s", pid, error)


def init_app(app: Flask) -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    metrics = Metrics(registry)
    registry.register(BreakerStates(app))
    app.extensions[EXTENSION_KEY] = metrics
    return metrics


def metrics_of(app: Flask) -> Metrics:
    """The metrics of `app`."""
    found: Metrics = app.extensions[EXTENSION_KEY]
    return found


def counting(app: Flask) -> Metrics | None:
    """The metrics of `app`, when it counts (METRICS_ENABLED)."""
    return metrics_of(app) if app.config["METRICS_ENABLED"] else None


def current_route() -> str:
    """The current request's route template, or "unmatched"."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


def method_of(method: str) -> str:
    return method if method in STANDARD_METHODS else "other"
