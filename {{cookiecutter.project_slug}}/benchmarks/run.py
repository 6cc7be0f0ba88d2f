"""`make bench`: the stack's cost against bare Flask, and goodput under overload.

Not a test: it prints figures. Each app runs under Gunicorn with gunicorn.conf.py
and the same settings (APP_ENV=production, one worker of GUNICORN_THREADS
threads, access log to /dev/null, no worker recycling) on 127.0.0.1; wrk
drives it over loopback.

1. Overhead: requests per second and p99 latency of ``/bench/constant`` on the
   stack (see apps.py) against bare Flask serving the same bytes, in alternating
   rounds, with memory backends and then with Redis (BENCH_REDIS_URL).
2. Goodput at twice the sustainable load of ``/bench/slow`` (a 50 ms wait on an
   upstream): an open-loop client sends at a fixed rate, with backpressure
   (MAX_IN_FLIGHT) and without it; it reports the p99 of admitted requests and
   the share and latency of shed 503s.

Needs wrk (``apt-get install wrk``, ``brew install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT = Path(__file__).resolve().parent.parent
CONSTANT = "/bench/constant"
SLOW = "/bench/slow"
START_TIMEOUT = 60.0
# High enough never to refuse a benchmark request, while still being checked.
UNREACHED_LIMIT = "1000000000 per minute"
WRK_LATENCY = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
WRK = shutil.which("wrk") or "wrk"


@dataclass
class Server:
    """A Gunicorn serving one of the benchmark apps."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def signing_key() -> str:
    """A throwaway JWT_PRIVATE_KEY: production refuses to start without one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def base_env(workdir: Path, threads: int) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FLASK_", "GUNICORN_", "POLICY_LIMIT_", "JWT_"))
        and name not in {"REDIS_URL", "MAX_IN_FLIGHT", "WEB_CONCURRENCY"}
    }
    env.update(
        APP_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(48),
        JWT_PRIVATE_KEY=signing_key(),
        DATABASE_URL=f"sqlite:///{workdir / 'bench.db'}",
        # With Celery, production needs a broker; the benchmark sends no task,
        # so one nobody listens on will do (ignored without Celery).
        CELERY_BROKER_URL="redis://127.0.0.1:9/0",
        FLASK_SKIP_DOTENV="1",
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS=str(threads),
        RATELIMIT_DEFAULT=UNREACHED_LIMIT,
        POLICY_LIMIT_READ=UNREACHED_LIMIT,
    )
    return env


@contextlib.contextmanager
def serving(app: str, env: dict[str, str], args: str = "") -> Iterator[Server]:
    """Gunicorn with gunicorn.conf.py serving ``benchmarks.apps:<app>()``;
    `args` join its command line (GUNICORN_CMD_ARGS)."""
    port = free_port()
    # No worker recycling: a restart would measure the app's boot, not requests.
    fixed = f"--bind 127.0.0.1:{port} --access-logfile /dev/null --max-requests 0"
    process = subprocess.Popen(  # noqa: S603 - a fixed command line
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            f"benchmarks.apps:{app}()",
        ],
        cwd=PROJECT,
        env=env | {"GUNICORN_CMD_ARGS": f"{fixed} {args}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(process, port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                sys.exit(f"{app}: gunicorn exited with status {process.returncode}")
            try:
                with urllib.request.urlopen(server.url + CONSTANT, timeout=5):  # noqa: S310 - a local URL
                    break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"{app}: gunicorn did not answer within {START_TIMEOUT} s")
                time.sleep(0.2)
        yield server
    finally:
        server.stop()


@dataclass
class WrkRun:
    rate: float
    p99_ms: float
    errors: int


def wrk(
    url: str, connections: int, seconds: float, *, keep_alive: bool = True
) -> WrkRun:
    """One wrk run on one thread; requests per second and p99 in ms.

    Without `keep_alive`, every request comes on a new connection.
    """
    close = () if keep_alive else ("--header", "Connection: close")
    result = subprocess.run(  # noqa: S603 - a fixed command line
        [
            WRK,
            "--latency",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            *close,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    return parse_wrk(result.stdout)


def parse_wrk(output: str) -> WrkRun:
    """Requests per second, p99 and non-2xx count from ``wrk --latency``."""
    rate = WRK_RATE.search(output)
    latency = WRK_LATENCY.search(output)
    if rate is None or latency is None:
        sys.exit(f"could not read wrk's output:\n{output}")
    errors = WRK_ERRORS.search(output)
    return WrkRun(
        rate=float(rate.group(1)),
        p99_ms=float(latency.group(1)) * UNIT_MS[latency.group(2)],
        errors=int(errors.group(1)) if errors else 0,
    )


@dataclass
class Comparison:
    """Alternating rounds of bare and stack runs."""

    bare: list[WrkRun] = field(default_factory=list)
    stack: list[WrkRun] = field(default_factory=list)

    @staticmethod
    def median_rate(runs: list[WrkRun]) -> float:
        return statistics.median(run.rate for run in runs)

    @staticmethod
    def median_p99(runs: list[WrkRun]) -> float:
        return statistics.median(run.p99_ms for run in runs)


def compare(
    env: dict[str, str], stack_env: dict[str, str], options: argparse.Namespace
) -> Comparison:
    """Throughput of both apps, alternating so that drift hits both alike."""
    found = Comparison()
    with serving("bare", env) as bare, serving("stack", stack_env) as stack:
        for server in (bare, stack):
            wrk(server.url + CONSTANT, options.connections, options.warmup)
        for _ in range(options.rounds):
            for server, runs in ((bare, found.bare), (stack, found.stack)):
                run = wrk(server.url + CONSTANT, options.connections, options.seconds)
                if run.errors:
                    sys.exit(f"{run.errors} non-2xx answers: raise the limits")
                runs.append(run)
    return found


def print_comparison(label: str, found: Comparison) -> float:
    bare_rate = Comparison.median_rate(found.bare)
    stack_rate = Comparison.median_rate(found.stack)
    ratio = stack_rate / bare_rate
    print(
        f"{label:<8} bare  {bare_rate:>9.0f} req/s  p99 "
        f"{Comparison.median_p99(found.bare):>6.2f} ms"
    )
    print(
        f"{label:<8} stack {stack_rate:>9.0f} req/s  p99 "
        f"{Comparison.median_p99(found.stack):>6.2f} ms   "
        f"throughput ratio {ratio:.2f}"
    )
    return ratio


@dataclass
class Outcome:
    status: int
    latency_ms: float
    finished: float


async def one_request(port: int, scheduled: float, timeout: float) -> Outcome:
    """GET /bench/slow on a new connection; latency from its scheduled start."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {SLOW} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await reader.readline()
            await reader.read()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        status = int(status_line.split()[1]) if status_line else 0
    except (TimeoutError, OSError, ValueError, IndexError):
        status = 0
    finished = loop.time()
    return Outcome(status, (finished - scheduled) * 1000, finished)


@dataclass
class OpenLoopRun:
    started: float
    outcomes: list[Outcome]


async def open_loop(port: int, rate: float, seconds: float) -> OpenLoopRun:
    """Send at `rate` per second whatever the answers are (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    tasks = []
    for number in range(int(rate * seconds)):
        scheduled = start + number / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        tasks.append(asyncio.create_task(one_request(port, scheduled, timeout=15.0)))
    return OpenLoopRun(start, list(await asyncio.gather(*tasks)))


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def print_goodput(label: str, run: OpenLoopRun) -> None:
    """Goodput counts successes over the time until the last answer came back."""
    outcomes = run.outcomes
    admitted = [o.latency_ms for o in outcomes if 200 <= o.status < 300]
    shed = [o.latency_ms for o in outcomes if o.status == 503]
    failed = len(outcomes) - len(admitted) - len(shed)
    elapsed = max(o.finished for o in outcomes) - run.started
    print(
        f"{label:<19} goodput {len(admitted) / elapsed:>6.1f} req/s  "
        f"admitted p99 {p99(admitted):>8.1f} ms  "
        f"shed {len(shed) / len(outcomes):>4.0%} (p99 {p99(shed):>6.1f} ms)  "
        f"failed or timed out {failed}"
    )


def goodput(env: dict[str, str], options: argparse.Namespace) -> None:
    threads = int(env["GUNICORN_THREADS"])
    in_flight = max(1, threads - 1)
    with serving("stack", env | {"MAX_IN_FLIGHT": str(in_flight)}) as server:
        wrk(server.url + SLOW, in_flight, options.warmup)
        sustainable = wrk(server.url + SLOW, in_flight, options.seconds).rate
    offered = 2 * sustainable
    print(
        f"\nGoodput: {SLOW} waits {float(env.get('BENCH_UPSTREAM_WAIT', '0.05')):g} s; "
        f"sustainable {sustainable:.0f} req/s with {in_flight} in flight; "
        f"offered {offered:.0f} req/s (open loop) for {options.seconds:g} s"
    )
    for label, bound in (
        (f"backpressure ({in_flight})", in_flight),
        ("no backpressure", 10_000),
    ):
        with serving("stack", env | {"MAX_IN_FLIGHT": str(bound)}) as server:
            run = asyncio.run(open_loop(server.port, offered, options.seconds))
        print_goodput(label, run)


def redis_env(url: str) -> dict[str, str] | None:
    """REDIS_URL and a prefix of this run's own, or None if Redis does not answer."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
            client.ping()
    except redis.RedisError as error:
        print(f"\nRedis at {url} does not answer ({type(error).__name__}): skipped.")
        return None
    return {"REDIS_URL": url, "REDIS_KEY_PREFIX": f"bench-{secrets.token_hex(6)}"}


def forget(env: dict[str, str]) -> None:
    """Remove the keys a Redis run wrote."""
    with redis.Redis.from_url(env["REDIS_URL"]) as client:
        for key in client.scan_iter(f"{env['REDIS_KEY_PREFIX']}:*"):
            client.delete(key)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per measured run")
    parser.add_argument("--warmup", type=float, default=3, help="before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=4, help="GUNICORN_THREADS")
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="wrk connections (default: MAX_IN_FLIGHT, threads - 1, so none is shed)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis for the second comparison (BENCH_REDIS_URL)",
    )
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-goodput", action="store_true")
    options = parser.parse_args()
    if options.connections is None:
        options.connections = max(1, options.threads - 1)
    return options


def main() -> None:
    options = parse_options()
    if not Path(WRK).is_absolute():
        sys.exit("wrk is not installed (apt-get install wrk, or brew install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        env = base_env(Path(workdir), options.threads)
        print(
            f"{CONSTANT}: {options.rounds} rounds of {options.seconds:g} s, "
            f"wrk -t1 -c{options.connections}, 1 worker x {options.threads} threads"
        )
        print_comparison("memory", compare(env, env, options))
        with_redis = None if options.skip_redis else redis_env(options.redis_url)
        if with_redis is not None:
            try:
                print_comparison("redis", compare(env, env | with_redis, options))
            finally:
                forget(env | with_redis)
        if not options.skip_goodput:
            goodput(env, options)


if __name__ == "__main__":
    main()
