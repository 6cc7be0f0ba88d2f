"""`make bench-workers`: Gunicorn's worker models on a view that waits on I/O.

Not a test: it prints figures. ``/bench/slow`` (see apps.py) waits 50 ms on a
stand-in upstream, as a view waits on a database or another service; each
worker model serves it under Gunicorn with gunicorn.conf.py (APP_ENV=production,
access log to /dev/null, no worker recycling) on 127.0.0.1, and wrk drives it
over loopback with more connections than any model has threads, so each runs
at its capacity:

- sync: --workers processes, one request at a time each;
- gthread: the same processes with each --threads count;
- sync with 2 x CPUs + 1 processes (--wide), the usual rule for sync workers.

Each is measured twice: with a new connection per request (``Connection:
close``, as nginx sends by default to the servers behind it) and with
connections kept alive (clients or load balancers that reuse them). A gthread
worker serves only the connections it accepted, so with kept-alive connections
its share of the load is fixed when they open.

Every model admits as many requests as it has threads (MAX_IN_FLIGHT), all of
them to wrk's one client address (MAX_IN_FLIGHT_PER_CLIENT), so none is shed
or refused as that client's excess, and the figures are throughput, not a mix
of answers and refusals.
Several workers need REDIS_URL (gunicorn.conf.py refuses to start them
without), so they share the Redis of --redis-url, under a prefix of this run's
own that is removed after.

Needs wrk (``apt-get install wrk``, ``brew install wrk``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.run import (
    SLOW,
    WRK,
    App,
    WrkRun,
    base_env,
    forget,
    redis_env,
    serving_all,
    wrk,
)


@dataclass
class Model:
    """One worker model: a worker class, processes and threads per process."""

    label: str
    worker_class: str
    processes: int
    threads: int
    runs: dict[bool, list[WrkRun]] = field(
        default_factory=lambda: {True: [], False: []}
    )

    def args(self) -> str:
        return f"--worker-class {self.worker_class} --threads {self.threads}"

    def env(self) -> dict[str, str]:
        return {
            "WEB_CONCURRENCY": str(self.processes),
            "GUNICORN_THREADS": str(self.threads),
            "MAX_IN_FLIGHT": str(self.threads),
            "MAX_IN_FLIGHT_PER_CLIENT": str(self.threads),
        }

    def ceiling(self, wait: float) -> float:
        """Requests per second if every thread did nothing but wait."""
        return self.processes * self.threads / wait if wait else float("inf")


def models(options: argparse.Namespace) -> list[Model]:
    found = [Model("sync", "sync", options.workers, 1)]
    found += [
        Model(f"gthread x {threads}", "gthread", options.workers, threads)
        for threads in options.threads
    ]
    if options.wide:
        found.append(Model("sync, 2 x CPUs + 1", "sync", options.wide, 1))
    return found


def measure(
    found: list[Model], env: dict[str, str], options: argparse.Namespace
) -> None:
    """Every model served at once, measured in alternating rounds, so that the
    machine's drift (other work, CPU frequency) hits each alike."""
    with serving_all(
        [App(options.app, env | model.env(), model.args()) for model in found]
    ) as servers:
        if options.warmup:
            for server in servers:
                wrk(server.url + SLOW, options.connections, options.warmup)
        for _ in range(options.rounds):
            for keep_alive in options.keep_alive:
                for model, server in zip(found, servers, strict=True):
                    run = wrk(
                        server.url + SLOW,
                        options.connections,
                        options.seconds,
                        keep_alive=keep_alive,
                    )
                    model.runs[keep_alive].append(run)


def print_models(found: list[Model], wait: float, *, keep_alive: bool) -> None:
    connections = "kept alive" if keep_alive else "one per request"
    print(
        f"\nConnections {connections}\n"
        f"{'worker model':<20} {'processes':>9} {'threads':>7} {'req/s':>7} "
        f"{'p99 ms':>8} {'ceiling':>8} {'non-2xx':>8}"
    )
    for model in found:
        runs = model.runs[keep_alive]
        rate = statistics.median(run.rate for run in runs)
        p99_ms = statistics.median(run.p99_ms for run in runs)
        errors = sum(run.errors for run in runs)
        print(
            f"{model.label:<20} {model.processes:>9} {model.threads:>7} "
            f"{rate:>7.1f} {p99_ms:>8.1f} {model.ceiling(wait):>8.0f} {errors:>8}"
        )


def parse_options() -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per measured run")
    parser.add_argument("--warmup", type=float, default=3, help="before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes of the sync and gthread runs"
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[4, 8],
        help="threads per gthread process, one run each",
    )
    parser.add_argument(
        "--wide",
        type=int,
        default=2 * cpus + 1,
        help="processes of the wide sync run (0: none)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="wrk connections (default: twice the most threads of any model)",
    )
    parser.add_argument(
        "--connection",
        choices=["close", "keep-alive", "both"],
        default="both",
        help="a new connection per request, connections kept alive, or both",
    )
    parser.add_argument("--app", choices=["stack", "bare"], default="stack")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis several workers share (BENCH_REDIS_URL)",
    )
    options = parser.parse_args()
    if options.connections is None:
        most = max(
            [options.workers, options.wide]
            + [options.workers * threads for threads in options.threads]
        )
        options.connections = 2 * most
    options.keep_alive = {
        "close": [False],
        "keep-alive": [True],
        "both": [False, True],
    }[options.connection]
    return options


def main() -> None:
    options = parse_options()
    if not Path(WRK).is_absolute():
        sys.exit("wrk is not installed (apt-get install wrk, or brew install wrk)")
    found = models(options)
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        env = base_env(Path(workdir), 1)
        shared: dict[str, str] = {}
        if any(model.processes > 1 for model in found):
            with_redis = redis_env(options.redis_url)
            if with_redis is None:
                sys.exit(
                    "several workers need a Redis: start one, or --workers 1 --wide 0"
                )
            shared = with_redis
        wait = float(env.get("BENCH_UPSTREAM_WAIT", "0.05"))
        print(
            f"{SLOW} ({options.app}) waits {wait * 1000:g} ms; wrk -t1 "
            f"-c{options.connections}, median of {options.rounds} rounds of "
            f"{options.seconds:g} s; {os.cpu_count()} CPUs"
        )
        try:
            measure(found, env | shared, options)
        finally:
            if shared:
                forget(env | shared)
        for keep_alive in options.keep_alive:
            print_models(found, wait, keep_alive=keep_alive)


if __name__ == "__main__":
    main()
