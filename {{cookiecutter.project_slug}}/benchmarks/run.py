"""`make bench`: the stack against bare Flask, goodput under overload, backpressure.

Not a test: it prints figures. Each app runs under Gunicorn with gunicorn.conf.py
and the same settings (APP_ENV=production, one worker of GUNICORN_THREADS
threads, access log to /dev/null, no worker recycling) on 127.0.0.1; wrk
drives it over loopback. Each server's stderr, where the app writes its JSON
log lines, goes to a file of its own, as a log shipper or a container runtime
collects it, not to the terminal: the lines are formatted and written as in
production, and the stack's are counted after.

1. Overhead: requests per second, p99 latency and (on Linux) the worker's CPU
   time per request of ``/bench/constant`` on the stack (see apps.py) against
   bare Flask serving the same bytes, in alternating rounds, with memory
   backends and then with Redis (BENCH_REDIS_URL). With memory backends the
   same rounds measure the stack's observability (request id, log line,
   metrics): against the stack without it (``unobserved``), and against the
   stack with METRICS_ENABLED=false and LOG_LEVEL=WARNING.
   With Redis, limits.py's figures follow: what counting a request against
   its rate limit costs, and how exact the count is at 4 and 16 workers.
2. Goodput at twice the sustainable load of ``/bench/slow`` (a 50 ms wait on an
   upstream): an open-loop client (openloop.py, a new connection per request)
   sends at a fixed rate, with backpressure (MAX_IN_FLIGHT) and without it; it
   reports the p99 of admitted requests and the share and latency of shed 503s.
3. Backpressure on the service itself (backpressure.py): ``wsgi:application``
   reading an item, under 8 closed-loop clients and then an open loop at twice
   the rate they were served at, each figure beside its target.

Needs wrk (``apt-get install wrk``, ``brew install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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

from benchmarks.openloop import LoadRun, get_request, open_loop, percentile

PROJECT = Path(__file__).resolve().parent.parent
CONSTANT = "/bench/constant"
SLOW = "/bench/slow"
# Seconds each server may take to answer; servers started together share them.
START_TIMEOUT = 60.0
# High enough never to refuse a benchmark request, while still being checked.
UNREACHED_LIMIT = "1000000000 per minute"
WRK_LATENCY = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_REQUESTS = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
# Linux's process table: the workers' CPU time (none on macOS).
PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if PROC.is_dir() else 100
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
WRK = shutil.which("wrk") or "wrk"
# The stack/bare throughput ratios the stack is built to: figures to read
# beside the measured ones, not a test (timings on a shared machine vary).
TARGETS = {"memory": 0.80, "redis": 0.65}
# The settings that switch off the request metrics and the request log lines.
QUIET = {"METRICS_ENABLED": "false", "LOG_LEVEL": "warning"}


@dataclass
class Server:
    """A Gunicorn serving one of the benchmark apps."""

    app: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path | None
    # A path it answers 200 on once it is up.
    probe: str = CONSTANT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_cpu(self) -> float | None:
        """CPU seconds its workers have used so far (None without /proc)."""
        return children_cpu_seconds(self.process.pid)

    def wait_until_up(self, deadline: float) -> None:
        """Return once the app answers; stop the benchmark if it cannot."""
        while True:
            if self.process.poll() is not None:
                sys.exit(
                    f"{self.app}: gunicorn exited with status "
                    f"{self.process.returncode}{last_lines(self.log)}"
                )
            try:
                with urllib.request.urlopen(self.url + self.probe, timeout=5):  # noqa: S310 - a local URL
                    return
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"{self.app}: gunicorn did not answer in time")
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, as production stops it (see stop_all)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def children_cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds of the processes whose parent is `pid` (a
    Gunicorn master's workers), or None where there is no /proc to read."""
    if not PROC.is_dir():
        return None
    ticks = 0
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            # After "pid (command)": state, ppid, ..., utime and stime (12, 13).
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


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
        and name
        not in {
            "REDIS_URL",
            "MAX_IN_FLIGHT",
            "MAX_IN_FLIGHT_PER_CLIENT",
            "WEB_CONCURRENCY",
            # The defaults are measured: JSON lines at INFO, metrics on, each
            # server counting in a directory of its own (gunicorn.conf.py).
            "LOG_LEVEL",
            "LOG_FORMAT",
            "METRICS_ENABLED",
            "PROMETHEUS_MULTIPROC_DIR",
        }
    }
    env.update(
        APP_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(48),
        JWT_PRIVATE_KEY=signing_key(),
        DATABASE_URL=f"sqlite:///{workdir / 'bench.db'}",
        # With Celery, production needs a broker; the benchmark sends no task,
        # so one nobody listens on will do (ignored without Celery).
        CELERY_BROKER_URL="redis://127.0.0.1:9/0",
        # Nor mail in the logs (the console backend): a server nobody runs.
        MAIL_BACKEND="smtp",
        MAIL_HOST="127.0.0.1",
        MAIL_PORT="9",
        FLASK_SKIP_DOTENV="1",
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS=str(threads),
        # wrk is one client address: it may hold every slot (MAX_IN_FLIGHT's
        # default), so none of its requests is refused as its own excess.
        MAX_IN_FLIGHT_PER_CLIENT=str(max(1, threads - 1)),
        RATELIMIT_DEFAULT=UNREACHED_LIMIT,
        POLICY_LIMIT_READ=UNREACHED_LIMIT,
    )
    return env


def last_lines(log: Path | None, count: int = 20) -> str:
    """The end of a server's log, to show why it stopped."""
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-count:]
    return "".join(f"\n  {line}" for line in lines)


@dataclass
class App:
    """What to serve: ``benchmarks.apps:<app>()`` with `env`, or Gunicorn's
    app argument `target` (``wsgi:application``, the service) with `app` its
    label; `args` join Gunicorn's command line (GUNICORN_CMD_ARGS); its stderr,
    the app's log, is appended to `log`, or dropped without one. It is up once
    `probe` answers. Gunicorn writes an access log to /dev/null unless
    `access_log` is False (production writes none: gunicorn.conf.py)."""

    app: str
    env: dict[str, str]
    args: str = ""
    log: Path | None = None
    target: str | None = None
    probe: str = CONSTANT
    access_log: bool = True

    def launch(self) -> Server:
        port = free_port()
        # No worker recycling: a restart would measure the app's boot, not requests.
        fixed = f"--bind 127.0.0.1:{port} --max-requests 0"
        if self.access_log:
            fixed += " --access-logfile /dev/null"
        with contextlib.ExitStack() as files:
            stderr = (
                subprocess.DEVNULL
                if self.log is None
                else files.enter_context(self.log.open("ab"))
            )
            process = subprocess.Popen(  # noqa: S603 - a fixed command line
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    "gunicorn.conf.py",
                    self.target or f"benchmarks.apps:{self.app}()",
                ],
                cwd=PROJECT,
                env=self.env | {"GUNICORN_CMD_ARGS": f"{fixed} {self.args}"},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        return Server(self.app, process, port, self.log, self.probe)


def stop_all(servers: list[Server]) -> None:
    """Stop every server at once: each takes a second or two to shut down."""
    for server in servers:
        server.stop()
    for server in servers:
        server.wait()


@contextlib.contextmanager
def serving_all(apps: list[App]) -> Iterator[list[Server]]:
    """Gunicorn with gunicorn.conf.py for each of `apps`, started side by side."""
    servers: list[Server] = []
    try:
        servers.extend(app.launch() for app in apps)
        deadline = time.monotonic() + START_TIMEOUT * len(servers)
        for server in servers:
            server.wait_until_up(deadline)
        yield servers
    finally:
        stop_all(servers)


@contextlib.contextmanager
def serving(
    app: str, env: dict[str, str], args: str = "", *, log: Path | None = None
) -> Iterator[Server]:
    """One server (see App)."""
    with serving_all([App(app, env, args, log)]) as (server,):
        yield server


@dataclass
class WrkRun:
    rate: float
    p99_ms: float
    errors: int
    requests: int


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
    requests = WRK_REQUESTS.search(output)
    return WrkRun(
        rate=float(rate.group(1)),
        p99_ms=float(latency.group(1)) * UNIT_MS[latency.group(2)],
        errors=int(errors.group(1)) if errors else 0,
        requests=int(requests.group(1)) if requests else 0,
    )


@dataclass
class Variant:
    """One app of a comparison, with its settings, its runs and its log file."""

    label: str
    app: str
    env: dict[str, str]
    log: Path
    runs: list[WrkRun] = field(default_factory=list)
    # The worker's CPU time per request of each run, in microseconds.
    cpu_us: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(run.rate for run in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(run.p99_ms for run in self.runs)

    @property
    def cpu_per_request(self) -> float | None:
        return statistics.median(self.cpu_us) if self.cpu_us else None

    def cpu_column(self) -> str:
        cpu = self.cpu_per_request
        return "" if cpu is None else f"  CPU {cpu:>5.0f} us/req"


def compare(variants: list[Variant], options: argparse.Namespace) -> None:
    """Every variant served at once and measured in alternating rounds, so that
    the machine's drift (other work, CPU frequency) hits each alike."""
    with serving_all(
        [App(variant.app, variant.env, log=variant.log) for variant in variants]
    ) as servers:
        if options.warmup:
            for server in servers:
                wrk(server.url + CONSTANT, options.connections, options.warmup)
        for _ in range(options.rounds):
            for variant, server in zip(variants, servers, strict=True):
                before = server.worker_cpu()
                run = wrk(server.url + CONSTANT, options.connections, options.seconds)
                after = server.worker_cpu()
                if run.errors:
                    sys.exit(f"{run.errors} non-2xx answers: raise the limits")
                variant.runs.append(run)
                if before is not None and after is not None and run.requests:
                    variant.cpu_us.append((after - before) / run.requests * 1e6)


def print_comparison(label: str, variants: list[Variant]) -> None:
    """Each variant's median rate and p99; each stack's ratio to bare Flask."""
    bare, *stacks = variants
    print(
        f"{label:<8} {bare.label:<16} {bare.rate:>6.0f} req/s  "
        f"p99 {bare.p99_ms:>6.2f} ms{bare.cpu_column()}"
    )
    for variant in stacks:
        ratio = variant.rate / bare.rate
        target = f" (target {TARGETS[label]:.2f})" if variant.label == "stack" else ""
        print(
            f"{label:<8} {variant.label:<16} {variant.rate:>6.0f} req/s  "
            f"p99 {variant.p99_ms:>6.2f} ms{variant.cpu_column()}  "
            f"throughput ratio {ratio:.2f}{target}"
        )


def request_lines(log: Path) -> int:
    """The request lines (JSON, ``"event": "request"``) in a server's log."""
    count = 0
    with log.open("rb") as lines:
        for line in lines:
            with contextlib.suppress(ValueError):
                found = json.loads(line)
                count += isinstance(found, dict) and found.get("event") == "request"
    return count


def print_observability(variants: list[Variant]) -> None:
    """The stack with its observability against the stack without it."""
    by_label = {variant.label: variant for variant in variants}
    observed = by_label["stack"]
    print(
        "observability (request id, JSON log line, metrics): the stack wrote "
        f"{request_lines(observed.log)} request lines "
        f"({observed.log.stat().st_size / 1e6:.1f} MB) to its log file"
    )
    for label, meaning in (
        ("stack unobserved", "without its observability hooks"),
        ("stack quiet", "with METRICS_ENABLED=false, LOG_LEVEL=WARNING"),
    ):
        without = by_label[label]
        cpu = ""
        if observed.cpu_per_request and without.cpu_per_request:
            times = observed.cpu_per_request / without.cpu_per_request
            cpu = f", CPU per request {times:.2f}x"
        print(
            f"  stack / stack {meaning}: throughput "
            f"{observed.rate / without.rate:.2f}{cpu}, p99 "
            f"{observed.p99_ms - without.p99_ms:+.2f} ms "
            f"({request_lines(without.log)} request lines)"
        )


def p99(values: list[float]) -> float:
    return percentile(values, 99)


def print_goodput(label: str, run: LoadRun) -> None:
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


def goodput(env: dict[str, str], options: argparse.Namespace, logs: Path) -> None:
    threads = int(env["GUNICORN_THREADS"])
    in_flight = max(1, threads - 1)
    log = logs / "goodput.log"
    with serving("stack", env | {"MAX_IN_FLIGHT": str(in_flight)}, log=log) as server:
        if options.warmup:
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
        with serving("stack", env | {"MAX_IN_FLIGHT": str(bound)}, log=log) as server:
            request = get_request(SLOW, keep_alive=False)
            run = asyncio.run(
                open_loop(server.port, request, offered, options.seconds, timeout=15.0)
            )
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


def measuring_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options of every benchmark run in alternating rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10, help="per measured run")
    parser.add_argument("--warmup", type=float, default=3, help="before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=4, help="GUNICORN_THREADS")
    return parser


def parse_options() -> argparse.Namespace:
    parser = measuring_parser(__doc__.splitlines()[0])
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
    parser.add_argument("--skip-backpressure", action="store_true")
    options = parser.parse_args()
    if options.connections is None:
        options.connections = max(1, options.threads - 1)
    return options


def main() -> None:
    options = parse_options()
    if not Path(WRK).is_absolute():
        sys.exit("wrk is not installed (apt-get install wrk, or brew install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        logs = Path(workdir)
        env = base_env(logs, options.threads)
        print(
            f"{CONSTANT}: {options.rounds} rounds of {options.seconds:g} s, "
            f"wrk -t1 -c{options.connections}, 1 worker x {options.threads} threads; "
            "server logs to files"
        )
        memory = [
            Variant("bare", "bare", env, logs / "memory-bare.log"),
            Variant("stack", "stack", env, logs / "memory-stack.log"),
            Variant(
                "stack unobserved",
                "unobserved",
                env | QUIET,
                logs / "memory-unobserved.log",
            ),
            Variant("stack quiet", "stack", env | QUIET, logs / "memory-quiet.log"),
        ]
        compare(memory, options)
        print_comparison("memory", memory)
        print_observability(memory)
        with_redis = None if options.skip_redis else redis_env(options.redis_url)
        if with_redis is not None:
            redis_variants = [
                Variant("bare", "bare", env, logs / "redis-bare.log"),
                Variant("stack", "stack", env | with_redis, logs / "redis-stack.log"),
            ]
            try:
                compare(redis_variants, options)
            finally:
                forget(env | with_redis)
            print_comparison("redis", redis_variants)
            # What counting rate limits costs, and how exact it is across
            # workers (imported here: limits.py imports this module).
            from benchmarks import limits  # noqa: PLC0415

            limits.report(env | with_redis, options, logs)
        if not options.skip_goodput:
            goodput(env, options, logs)
        if not options.skip_backpressure:
            # Imported here: backpressure.py imports this module.
            from benchmarks import backpressure  # noqa: PLC0415

            unloaded = min(backpressure.UNLOADED_SECONDS, options.seconds)
            plan = backpressure.Plan(options.seconds, options.warmup, unloaded)
            backpressure.report(env, logs, plan)


if __name__ == "__main__":
    main()
