"""`make profile`: a flame graph of the stack under the benchmark's load.

The app is served as `make bench` serves it (benchmarks/run.py: Gunicorn with
gunicorn.conf.py, APP_ENV=production, one worker of --threads threads, memory
backends unless --redis-url, the server's log to a file) and warmed up; then
py-spy attaches to the Gunicorn master and its worker (``--subprocesses``) and
samples them while wrk drives the path over loopback. The flame graph is an
SVG to open in a browser: a frame's width is its share of the samples (its own
and its callees'), a click zooms into it, Ctrl-F searches. Waiting threads are
left out (py-spy's default), so the graph shows where the CPU time goes.

py-spy reads the worker's memory (ptrace): as root, where
kernel.yama.ptrace_scope is 0, or in a container started with
``--cap-add SYS_PTRACE``. Needs wrk (``apt-get install wrk``, ``brew install wrk``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import (
    CONSTANT,
    PROJECT,
    SLOW,
    WRK,
    base_env,
    forget,
    last_lines,
    redis_env,
    serving,
    wrk,
)

OUTPUT = PROJECT / "benchmarks" / "profile.svg"
# py-spy, beside this interpreter (the project's environment) or on PATH.
PY_SPY = shutil.which(
    "py-spy",
    path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]
    ),
)
# What py-spy prints once it has attached and samples.
SAMPLING = "Sampling process"
ATTACH_TIMEOUT = 15.0
PTRACE = (
    "py-spy reads the worker's memory through ptrace: run as root, set "
    "kernel.yama.ptrace_scope to 0, or give the container --cap-add SYS_PTRACE."
)


def record(
    py_spy: str, pid: int, options: argparse.Namespace, log: Path
) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` and its children, once it says it has attached."""
    with log.open("wb") as output:
        spy = subprocess.Popen(  # noqa: S603 - a fixed command line
            [
                py_spy,
                "record",
                *("--pid", str(pid)),
                "--subprocesses",
                *("--rate", str(options.rate)),
                *("--format", "flamegraph"),
                *("--output", str(options.output)),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while SAMPLING not in log.read_text(errors="replace"):
        if spy.poll() is not None or time.monotonic() > deadline:
            spy.kill()
            spy.wait()
            sys.exit(
                f"py-spy could not attach to the worker:{last_lines(log)}\n{PTRACE}"
            )
        time.sleep(0.05)
    return spy


def stop(spy: subprocess.Popen[bytes], log: Path) -> None:
    """Ctrl-C for py-spy: it stops sampling and writes the flame graph."""
    spy.send_signal(signal.SIGINT)
    if spy.wait(timeout=120) != 0:
        sys.exit(f"py-spy exited with status {spy.returncode}:{last_lines(log)}")


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="of sampled load")
    parser.add_argument("--warmup", type=float, default=3, help="before sampling")
    parser.add_argument("--threads", type=int, default=4, help="GUNICORN_THREADS")
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="wrk connections (default: MAX_IN_FLIGHT, threads - 1, so none is shed)",
    )
    parser.add_argument(
        "--app", choices=["stack", "unobserved", "bare"], default="stack"
    )
    parser.add_argument("--path", choices=[CONSTANT, SLOW], default=CONSTANT)
    parser.add_argument(
        "--rate", type=int, default=100, help="py-spy samples per second"
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="serve with REDIS_URL (default: memory backends)",
    )
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help="the SVG (default: %(default)s)"
    )
    options = parser.parse_args()
    if options.connections is None:
        options.connections = max(1, options.threads - 1)
    options.output = options.output.resolve()
    return options


def main() -> None:
    options = parse_options()
    if not Path(WRK).is_absolute():
        sys.exit("wrk is not installed (apt-get install wrk, or brew install wrk)")
    if PY_SPY is None:
        sys.exit("py-spy is not installed (uv sync installs the dev group)")
    options.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="profile-") as workdir:
        logs = Path(workdir)
        env = base_env(logs, options.threads)
        if options.redis_url:
            with_redis = redis_env(options.redis_url)
            if with_redis is None:
                sys.exit(f"Redis at {options.redis_url} does not answer")
            env |= with_redis
        try:
            with serving(options.app, env, log=logs / "server.log") as server:
                url = server.url + options.path
                if options.warmup:
                    wrk(url, options.connections, options.warmup)
                spy = record(PY_SPY, server.process.pid, options, logs / "py-spy.log")
                try:
                    run = wrk(url, options.connections, options.seconds)
                finally:
                    stop(spy, logs / "py-spy.log")
        finally:
            if options.redis_url:
                forget(env)
    print(
        f"{options.path} on {options.app}: {options.seconds:g} s of wrk -t1 "
        f"-c{options.connections}, 1 worker x {options.threads} threads, "
        f"py-spy at {options.rate} samples/s: {run.rate:.0f} req/s "
        "(slowed by the sampling: not a benchmark figure)"
    )
    print(f"Flame graph: {options.output}")


if __name__ == "__main__":
    main()
