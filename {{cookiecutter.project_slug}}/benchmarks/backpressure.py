"""`make bench`, backpressure: the service's own read, under clients that wait
for their answers and under twice the load it can serve.

Not a test: it prints figures, each beside its target and whether it was met.
The service runs as in production: ``gunicorn -c gunicorn.conf.py
wsgi:application`` with APP_ENV=production, one worker of GUNICORN_THREADS
threads (4) and the default backpressure settings, memory backends, a SQLite
file migrated with ``flask db upgrade`` and one item in it (``flask
seed-items``), its JSON log lines in a file and no access log. As in run.py,
rate limits are set beyond reach (UNREACHED_LIMIT) and the worker is not
recycled (a restart would measure the app's boot). The load is ``GET
/api/v1/items/<id>`` from openloop.py, on 127.0.0.1, over kept-alive
connections. Each client has an address of its own, as behind compose's
proxy: the service trusts one proxy (TRUSTED_PROXIES=1) and each client sends
its address in X-Forwarded-For (the open loop's requests come from ADDRESSES
addresses in turn), so that the service's share of slots per client address
(MAX_IN_FLIGHT_PER_CLIENT) applies as in production:

1. Unloaded: one client in a closed loop (it sends its next request when the
   last is answered): the p99 latency of a worker with no queue.
2. Closed loop: CLIENTS (8) clients for --seconds. The 200 answers per second
   are the capacity; the 503s (shed) should be none: clients that wait for
   their answers queue briefly, within REQUEST_QUEUE_TIMEOUT.
3. Open loop at twice the capacity for --seconds, whatever the answers:
   goodput, the 200 answers within 1 s per second, should be at least 90% of
   the capacity, and the p99 latency of the admitted (200) answers under 5
   times the unloaded p99: the excess is shed at once, not queued.

run.py runs it after its other sections (``--skip-backpressure`` leaves it
out); ``python -m benchmarks.backpressure`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.openloop import (
    LoadRun,
    closed_loop,
    get_request,
    open_loop,
    percentile,
)
from benchmarks.run import PROJECT, App, Server, base_env, serving_all

ITEMS = "/api/v1/items"
LIVE = "/health/live"
CLIENTS = 8
# The client addresses of the open loop's requests, in turn.
ADDRESSES = 64
UNLOADED_SECONDS = 3.0
# The open loop offers this many times the capacity.
OVERLOAD = 2.0
# An answer counts towards goodput if it is a 200 within this many ms.
GOOD_WITHIN_MS = 1000.0
# The targets (issue 23): none shed in the closed loop; in the open loop, a
# goodput of at least this share of the capacity and an admitted p99 under
# this many times the unloaded p99.
TARGET_SHED = 0
TARGET_GOODPUT = 0.90
TARGET_P99_RATIO = 5.0
# Seconds between the closed and the open loop: an overload the closed loop
# set off ends a second after its last shed (the service's OVERLOAD_HOLD).
SETTLE = 2.0


@dataclass
class Plan:
    """How long each run lasts, and the closed loop's clients."""

    seconds: float = 10.0
    warmup: float = 3.0
    unloaded_seconds: float = UNLOADED_SECONDS
    clients: int = CLIENTS


def verdict(met: bool) -> str:  # noqa: FBT001 - read as verdict(figure < target)
    return "met" if met else "MISSED"


@dataclass
class Figures:
    """The three runs, and the figures read from them."""

    unloaded: LoadRun
    closed: LoadRun
    opened: LoadRun
    clients: int = CLIENTS

    @property
    def unloaded_p99(self) -> float:
        return percentile(self.unloaded.answered(200), 99)

    @property
    def capacity(self) -> float:
        """The closed loop's 200 answers per second."""
        return self.closed.rate(200)

    @property
    def shed(self) -> int:
        """The closed loop's 503s."""
        return len(self.closed.answered(503))

    @property
    def goodput(self) -> float:
        """The open loop's 200 answers within GOOD_WITHIN_MS, per second."""
        return self.opened.rate(200, GOOD_WITHIN_MS)

    @property
    def admitted_p99(self) -> float:
        return percentile(self.opened.answered(200), 99)

    @property
    def ratio(self) -> float:
        """The admitted p99 over the unloaded p99."""
        unloaded = self.unloaded_p99
        return self.admitted_p99 / unloaded if unloaded > 0 else float("nan")

    def print(self) -> None:
        """Each figure, and each target beside its figure with its verdict."""
        unloaded, closed, opened = self.unloaded, self.closed, self.opened
        print(
            f"  unloaded, 1 client (closed loop, {unloaded.seconds:.1f} s): "
            f"{unloaded.rate(200):.0f} req/s, p99 {self.unloaded_p99:.2f} ms"
            f"{others(unloaded, 200)}"
        )
        print(
            f"  closed loop, {self.clients} clients ({closed.seconds:.1f} s): "
            f"capacity {self.capacity:.0f} req/s, "
            f"p99 {percentile(closed.answered(200), 99):.2f} ms"
            f"{others(closed, 200, 503)}"
        )
        print(
            f"    shed {self.shed} of {len(closed.outcomes)} "
            f"(target {TARGET_SHED}): {verdict(self.shed <= TARGET_SHED)}"
        )
        total = len(opened.outcomes)
        shed = opened.answered(503)
        late = percentile([o.late_ms for o in opened.outcomes], 99)
        print(
            f"  open loop at {OVERLOAD:g} x capacity "
            f"({total / opened.seconds:.0f} req/s offered, {opened.seconds:.1f} s): "
            f"shed {len(shed) / total if total else 0:.0%} "
            f"(p99 {percentile(shed, 99):.2f} ms){others(opened, 200, 503)}; "
            f"requests sent p99 {late:.2f} ms after due"
        )
        share = self.goodput / self.capacity if self.capacity else 0.0
        print(
            f"    goodput {self.goodput:.0f} req/s (200 within "
            f"{GOOD_WITHIN_MS / 1000:g} s), {share:.1%} of capacity "
            f"(target >= {TARGET_GOODPUT:.0%}): {verdict(share >= TARGET_GOODPUT)}"
        )
        print(
            f"    admitted p99 {self.admitted_p99:.2f} ms, {self.ratio:.2f}x the "
            f"unloaded p99 of {self.unloaded_p99:.2f} ms "
            f"(target < {TARGET_P99_RATIO:g}x): "
            f"{verdict(self.ratio < TARGET_P99_RATIO)}"
        )


def others(run: LoadRun, *expected: int) -> str:
    """The answers of `run` with none of the `expected` statuses, if any."""
    statuses: dict[int, int] = {}
    for outcome in run.outcomes:
        if outcome.status not in expected:
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    if not statuses:
        return ""
    counts = ", ".join(
        f"{count} {'unanswered' if status == 0 else status}"
        for status, count in sorted(statuses.items())
    )
    return f"; other answers: {counts}"


def flask(env: dict[str, str], *arguments: str) -> None:
    """``flask --app wsgi ...``, as a release step would run it."""
    result = subprocess.run(  # noqa: S603 - a fixed command line
        [sys.executable, "-m", "flask", "--app", "wsgi", *arguments],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode:
        sys.exit(f"flask {' '.join(arguments)} failed:\n{result.stderr}")


def first_item(server: Server) -> int:
    """The id of the item the list starts with."""
    with urllib.request.urlopen(  # noqa: S310 - a local URL
        f"{server.url}{ITEMS}?per_page=1", timeout=10
    ) as answer:
        return int(json.load(answer)["items"][0]["id"])


def from_addresses(path: str, count: int) -> list[bytes]:
    """GETs of `path`, each from a client address of its own (documentation
    addresses, RFC 5737), as the proxy in front would pass them on."""
    return [
        get_request(path, headers={"X-Forwarded-For": f"198.51.100.{number + 1}"})
        for number in range(count)
    ]


def measure(server: Server, plan: Plan) -> Figures:
    """The three runs on `server`, one after the other."""
    requests = from_addresses(
        f"{ITEMS}/{first_item(server)}", max(ADDRESSES, plan.clients)
    )
    port = server.port
    if plan.warmup:
        asyncio.run(closed_loop(port, requests, 1, plan.warmup))
    unloaded = asyncio.run(closed_loop(port, requests, 1, plan.unloaded_seconds))
    closed = asyncio.run(closed_loop(port, requests, plan.clients, plan.seconds))
    time.sleep(SETTLE)
    offered = OVERLOAD * closed.rate(200)
    opened = asyncio.run(open_loop(port, requests, offered, plan.seconds))
    return Figures(unloaded, closed, opened, plan.clients)


def report(env: dict[str, str], workdir: Path, plan: Plan) -> None:
    """Every figure of the module docstring, with `env` from run.base_env."""
    # The default share of slots per client: each client has its own address.
    env = {
        name: value for name, value in env.items() if name != "MAX_IN_FLIGHT_PER_CLIENT"
    }
    env |= {
        "DATABASE_URL": f"sqlite:///{workdir / 'backpressure.db'}",
        # Behind one proxy, which says who each client is.
        "TRUSTED_PROXIES": "1",
    }
    flask(env, "db", "upgrade")
    flask(env, "seed-items", "--count", "1")
    print(
        f"\nBackpressure: GET {ITEMS}/<id> on wsgi:application, 1 worker x "
        f"{env['GUNICORN_THREADS']} threads, memory backends, SQLite"
    )
    service = App(
        "service",
        env,
        log=workdir / "backpressure.log",
        target="wsgi:application",
        probe=LIVE,
        access_log=False,
    )
    with serving_all([service]) as (server,):
        figures = measure(server, plan)
    figures.print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="of each loaded run")
    parser.add_argument("--warmup", type=float, default=3, help="before measuring")
    parser.add_argument(
        "--unloaded-seconds",
        type=float,
        default=UNLOADED_SECONDS,
        help="of the one client's run",
    )
    parser.add_argument("--threads", type=int, default=4, help="GUNICORN_THREADS")
    parser.add_argument(
        "--clients", type=int, default=CLIENTS, help="of the closed loop"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        plan = Plan(
            options.seconds, options.warmup, options.unloaded_seconds, options.clients
        )
        report(base_env(Path(workdir), options.threads), Path(workdir), plan)


if __name__ == "__main__":
    main()
