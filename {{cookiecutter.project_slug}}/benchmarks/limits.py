"""`make bench`, rate limits: what counting a request costs, and how exact it is.

Needs Redis (BENCH_REDIS_URL); run.py calls ``report`` after its Redis
comparison, and ``python -m benchmarks.limits`` runs it alone.

1. Cost. The stack of apps.py on Redis, 1 worker, with its rate limits counted
   (one Lua script call to Redis a request) and with them off, served side by
   side in alternating rounds (run.py's ``compare``): the difference in the
   worker's CPU time per request and in p99 is what counting costs. Then the
   counter alone, in this process: one thread calling ``PolicyLimits.hit``
   for a policy of one window and one of two, on Redis and in memory.
2. Exactness. Gunicorn with gunicorn.conf.py, 4 and then 16 workers on one
   Redis, ``/bench/constant`` limited to LIMIT a day, LIMIT + 10 % requests
   from CLIENTS concurrent clients, each on a connection of its own: the
   requests admitted beyond the limit (over-admission), those refused within
   it (under-admission), and the admitted answers whose RateLimit-Remaining
   was not what was left (each should carry another of 0 .. LIMIT - 1).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.run import (
    CONSTANT,
    WRK,
    Server,
    Variant,
    base_env,
    compare,
    forget,
    measuring_parser,
    redis_env,
    serving,
)
from {{ cookiecutter.package_name }}.resilience.limits import PolicyLimits
from {{ cookiecutter.package_name }}.resilience.store import RedisStore

LIMIT = 1000
CLIENTS = 32
WORKER_COUNTS = (4, 16)
# Calls of the counter alone, per measured batch.
CALLS = 5000
DAY = 86400


def print_cost(variants: list[Variant]) -> None:
    """The counted stack against the one that counts nothing."""
    off, on = variants
    for variant in variants:
        print(
            f"limits   {variant.label:<16} {variant.rate:>6.0f} req/s  "
            f"p99 {variant.p99_ms:>6.2f} ms{variant.cpu_column()}"
        )
    cpu = ""
    if on.cpu_per_request is not None and off.cpu_per_request is not None:
        cpu = f"CPU {on.cpu_per_request - off.cpu_per_request:+.0f} us/req, "
    print(
        f"  counting in Redis costs {cpu}p99 {on.p99_ms - off.p99_ms:+.2f} ms, "
        f"throughput ratio {on.rate / off.rate:.2f}"
    )


def per_call_us(limits: PolicyLimits, policy: str) -> tuple[float, float]:
    """Microseconds of one ``hit``, elapsed and of this process's CPU time (the
    median of three batches of CALLS each)."""
    elapsed, cpu = [], []
    for batch in range(3):
        identity = f"bench:{batch}"
        started, used = time.perf_counter(), time.process_time()
        for _ in range(CALLS):
            limits.hit(policy, identity, time.time())
        elapsed.append((time.perf_counter() - started) / CALLS * 1e6)
        cpu.append((time.process_time() - used) / CALLS * 1e6)
    return statistics.median(elapsed), statistics.median(cpu)


def print_counter(url: str, prefix: str) -> None:
    """The counter alone, in this process: Redis and memory, one and two windows
    (the second never reached: both are counted on every call)."""
    policies = {
        "one": "1000000000 per day",
        "two": "1000000000 per day; 1000000000 per year",
    }
    store = RedisStore(url, prefix, timeout=5.0)
    for label, shared in (("Redis", store), ("memory", None)):
        limits = PolicyLimits(policies, shared)
        for policy in policies:
            elapsed, cpu = per_call_us(limits, policy)
            print(
                f"  the counter alone, one thread, {label}, {policy} window"
                f"{'s' if policy == 'two' else ''}: {elapsed:.0f} us a request, "
                f"{cpu:.0f} us of it CPU"
            )
    store.pool.disconnect()


@dataclass
class Admission:
    """What one burst of requests to a server was answered."""

    workers: int
    counted_before: int
    admitted: int
    refused: int
    false_remaining: int
    other: int

    def print(self) -> None:
        allowed = LIMIT - self.counted_before
        over = max(0, self.admitted - allowed)
        under = max(0, min(allowed, self.admitted + self.refused) - self.admitted)
        print(
            f"  {self.workers:>2} workers: {self.admitted} admitted of {allowed} "
            f"allowed, {self.refused} refused: over-admission {over}, "
            f"under-admission {under} ({under / LIMIT:.1%} of the window); "
            f"RateLimit-Remaining false in {self.false_remaining}"
            + (f"; {self.other} other answers" if self.other else "")
        )


def get(server: Server, path: str) -> tuple[int, str | None]:
    """GET `path` on a connection of its own: the status and RateLimit-Remaining."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("RateLimit-Remaining")
    finally:
        connection.close()


def served_by(log: Path) -> set[int]:
    """The worker processes that wrote a request line to `log` so far."""
    workers = set()
    for text in log.read_text().splitlines(keepends=True):
        if text.endswith("\n") and '"event": "request"' in text:
            workers.add(json.loads(text)["pid"])
    return workers


def counted(url: str, prefix: str) -> int:
    """Hits the read policy has counted so far under `prefix` (the start-up's)."""
    with redis.Redis.from_url(url) as client:
        return sum(
            int(client.get(key) or 0)
            for key in client.scan_iter(f"{prefix}:limits:read:*")
        )


def admission(env: dict[str, str], workers: int, log: Path) -> Admission:
    """LIMIT + 10 % requests to `workers` workers, once every one answers."""
    with serving("stack", env | {"WEB_CONCURRENCY": str(workers)}, log=log) as server:
        deadline = time.monotonic() + 120
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            # Requests no limit under test counts, until every worker answered.
            while len(served_by(log)) < workers:
                if time.monotonic() > deadline:
                    sys.exit(f"only {len(served_by(log))} of {workers} workers answer")
                list(pool.map(lambda _: get(server, "/warm-up"), range(workers)))
            if time.time() % DAY > DAY - 120:  # the window would end mid-burst
                time.sleep(DAY - time.time() % DAY + 1)
            before = counted(env["REDIS_URL"], env["REDIS_KEY_PREFIX"])
            answers = list(
                pool.map(lambda _: get(server, CONSTANT), range(LIMIT + LIMIT // 10))
            )
    admitted = [remaining for status, remaining in answers if status == 200]
    left = sorted(int(remaining or -1) for remaining in admitted)
    expected = list(range(LIMIT - before - len(admitted), LIMIT - before))
    return Admission(
        workers=workers,
        counted_before=before,
        admitted=len(admitted),
        refused=sum(status == 429 for status, _ in answers),
        false_remaining=sum(a != b for a, b in zip(left, expected, strict=True)),
        other=sum(status not in {200, 429} for status, _ in answers),
    )


def report(
    env: dict[str, str],
    options: argparse.Namespace,
    logs: Path,
    worker_counts: tuple[int, ...] = WORKER_COUNTS,
) -> None:
    """Every figure of the module docstring; `env` has REDIS_URL."""
    print(f"\nRate limits on Redis ({CONSTANT}, 1 worker x {options.threads} threads)")
    variants = [
        Variant("no limits", "unlimited", env, logs / "limits-off.log"),
        Variant("counted", "stack", env, logs / "limits-on.log"),
    ]
    try:
        compare(variants, options)
    finally:
        forget(env)
    print_cost(variants)
    print_counter(env["REDIS_URL"], env["REDIS_KEY_PREFIX"])
    forget(env)
    print(
        f"\nExactness: {LIMIT} per day on {CONSTANT}, {LIMIT + LIMIT // 10} "
        f"requests from {CLIENTS} clients at once, one Redis"
    )
    exact = env | {
        "POLICY_LIMIT_READ": f"{LIMIT} per day",
        "GUNICORN_THREADS": "16",
        "MAX_IN_FLIGHT": "16",
        # Its clients share one address: every slot is theirs.
        "MAX_IN_FLIGHT_PER_CLIENT": "16",
    }
    for workers in worker_counts:
        run = exact | {"REDIS_KEY_PREFIX": f"bench-{secrets.token_hex(6)}"}
        try:
            admission(run, workers, logs / f"limits-{workers}.log").print()
        finally:
            forget(run)


def main() -> None:
    parser = measuring_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=WORKER_COUNTS,
        help="the worker counts whose exactness is measured",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis to count in (BENCH_REDIS_URL)",
    )
    options = parser.parse_args()
    options.connections = max(1, options.threads - 1)
    if not Path(WRK).is_absolute():
        sys.exit("wrk is not installed (apt-get install wrk, or brew install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        logs = Path(workdir)
        with_redis = redis_env(options.redis_url)
        if with_redis is None:
            sys.exit(1)
        env = base_env(logs, options.threads) | with_redis
        report(env, options, logs, tuple(options.workers))


if __name__ == "__main__":
    main()
