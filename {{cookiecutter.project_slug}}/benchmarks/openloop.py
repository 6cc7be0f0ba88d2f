"""The benchmarks' load generators: an open loop, and the closed loop it is
measured against.

wrk is closed-loop: each connection sends its next request when the last is
answered, so a server that slows down slows the load too, and its queue never
shows. Here, in ``open_loop``, request n is due at ``start + n / rate``; it
goes out on a kept-alive connection that is free, else on a new one, and its
latency counts from when it was due, so time spent waiting for a connection
counts too. Connections are kept alive as a proxy in front (nginx's upstream
keepalive) keeps them, unless ``keep_alive=False`` asks for a new connection
per request (``Connection: close``, nginx's default towards the servers
behind it).

``closed_loop`` is wrk's kind of load on the same connections and the same
reading of answers: each client sends its next request when the last is
answered, and a request's latency counts from when it was sent. Both send
one request over and over (``get_request``) and record each one's status, so
that 503s (shed) are told from other failures; or, given several requests (one
per client address, say), the closed loop's client i sends the i-th and the
open loop's request n the n-th, each in turn.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# More connections than this at once means the server has stopped answering.
MAX_CONNECTIONS = 2000
HOST = "127.0.0.1"
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Outcome:
    """One request: its status (0: no answer), latency in ms, and end time;
    how late it went out, in ms after it was due (the generator's own lag)."""

    status: int
    latency_ms: float
    finished: float
    late_ms: float = 0.0


@dataclass
class LoadRun:
    """The outcomes of a run that started at `started` (the event loop's
    clock) and lasted `seconds`."""

    started: float
    seconds: float
    outcomes: list[Outcome]

    def answered(self, status: int, within_ms: float | None = None) -> list[float]:
        """Latencies (ms) of the answers with `status`, within `within_ms`."""
        return [
            o.latency_ms
            for o in self.outcomes
            if o.status == status and (within_ms is None or o.latency_ms <= within_ms)
        ]

    def rate(self, status: int, within_ms: float | None = None) -> float:
        """Answers with `status` (within `within_ms`) per second of the run."""
        return len(self.answered(status, within_ms)) / self.seconds

    def failed(self) -> int:
        """Requests that got no answer at all."""
        return sum(o.status == 0 for o in self.outcomes)


class Connections:
    """Kept-alive connections to one server, each used by one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[Connection] = []
        self.open = 0

    async def get(self) -> Connection:
        if self.idle:
            return self.idle.pop()
        if self.open >= MAX_CONNECTIONS:
            raise OSError("too many connections")
        self.open += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:  # refused, or cancelled by the request's timeout
            self.open -= 1
            raise

    def put(self, connection: Connection) -> None:
        self.idle.append(connection)

    def close(self, connection: Connection) -> None:
        self.open -= 1
        connection[1].close()

    def close_all(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.open -= len(self.idle)
        self.idle.clear()


def get_request(
    path: str, *, keep_alive: bool = True, headers: Mapping[str, str] | None = None
) -> bytes:
    """A GET of `path` with `headers`, asking for the connection to be closed
    after without `keep_alive`."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    close = "" if keep_alive else "Connection: close\r\n"
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{lines}{close}\r\n".encode()


def in_turn(request: bytes | Sequence[bytes]) -> Sequence[bytes]:
    """One request, or several to send each in turn."""
    return (request,) if isinstance(request, bytes) else request


async def exchange(connection: Connection, request: bytes) -> tuple[int, bool]:
    """Send `request`, read the answer; its status and whether the connection
    stays open."""
    reader, writer = connection
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
        elif name == "transfer-encoding":
            raise ValueError("a chunked answer: not read here")
    if length:
        await reader.readexactly(length)
    return status, keep


async def one_request(
    pool: Connections, request: bytes, due: float, timeout: float
) -> Outcome:
    """`request` on a connection of `pool`; its latency counts from `due`."""
    loop = asyncio.get_running_loop()
    connection = None
    status = 0
    sent = due
    try:
        async with asyncio.timeout(timeout):
            connection = await pool.get()
            sent = loop.time()
            status, keep = await exchange(connection, request)
        if keep:
            pool.put(connection)
        else:
            pool.close(connection)
    except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        status = 0
        if connection is not None:
            pool.close(connection)
    finished = loop.time()
    return Outcome(status, (finished - due) * 1000, finished, (sent - due) * 1000)


async def open_loop(
    port: int,
    request: bytes | Sequence[bytes],
    rate: float,
    seconds: float,
    *,
    timeout: float = 10.0,
) -> LoadRun:
    """Send `request` (or each of several in turn) `rate` times a second for
    `seconds` to 127.0.0.1:`port`, whatever the answers are (no coordinated
    omission)."""
    requests = in_turn(request)
    loop = asyncio.get_running_loop()
    pool = Connections(HOST, port)
    start = loop.time() + 0.1
    tasks = []
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        now = loop.time()
        # Every request due by now goes out at once: a late tick sends a burst.
        due_now = min(total, math.floor((now - start) * rate) + 1)
        while sent < due_now:
            due = start + sent / rate
            sending = requests[sent % len(requests)]
            tasks.append(asyncio.create_task(one_request(pool, sending, due, timeout)))
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    outcomes = list(await asyncio.gather(*tasks))
    pool.close_all()
    await asyncio.sleep(0)  # the transports close
    return LoadRun(start, seconds, outcomes)


async def closed_loop(
    port: int,
    request: bytes | Sequence[bytes],
    clients: int,
    seconds: float,
    *,
    timeout: float = 10.0,
) -> LoadRun:
    """`clients` clients send `request` (client i the i-th of several, in turn)
    for `seconds` to 127.0.0.1:`port`, each its next when the last is
    answered, on a connection kept alive.

    The run lasts until its last answer: its rate is answers per second.
    """
    requests = in_turn(request)
    loop = asyncio.get_running_loop()
    pool = Connections(HOST, port)
    start = loop.time()
    end = start + seconds
    outcomes: list[Outcome] = []

    async def client(sending: bytes) -> None:
        while loop.time() < end:
            outcomes.append(await one_request(pool, sending, loop.time(), timeout))

    await asyncio.gather(
        *(client(requests[number % len(requests)]) for number in range(clients))
    )
    pool.close_all()
    await asyncio.sleep(0)  # the transports close
    last = max((o.finished for o in outcomes), default=end)
    return LoadRun(start, last - start, outcomes)


def percentile(values: list[float], percent: int) -> float:
    """The `percent`th percentile of `values` (nan without any)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]
