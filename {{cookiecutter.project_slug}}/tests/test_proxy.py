"""The reverse proxy of compose.yaml: deploy/nginx.conf, run by Debian's nginx in
front of the real Gunicorn, under the slow-client attack of the trust review.

Forty connections trickle their request headers and eight their bodies, while
liveness probes and another client's reads must each be answered with 200
within the client's 2 s timeout. The probes' p99 is printed, not asserted.

The configuration is the project's own file: `adapted_config` changes only what
compose alone knows (Gunicorn's address, the port) and gives nginx folders of
this test's own to write to, and fails if the file no longer has those lines.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from test_gunicorn import SAFE_SECRET, free_port, launch, server_env

from conftest import PROJECT, needs_service

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
CONFIG = PROJECT / "deploy" / "nginx.conf"
# What only compose knows, and the folders nginx writes to by default.
UPSTREAM = "server web:8000;"
LISTEN = "listen 8080;"
TEMP_FOLDERS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# The patience of the review's clients.
CLIENT_TIMEOUT = 2.0
SLOW_HEADERS = 40
SLOW_BODIES = 8
ATTACK_SECONDS = 8.0
# deploy/nginx.conf's limit_conn: requests in progress per client address.
IN_PROGRESS_PER_ADDRESS = 32
START_TIMEOUT = 30.0

pytestmark = pytest.mark.standalone
needs_nginx = needs_service(
    available=NGINX is not None, reason="needs nginx (apt-get install nginx)"
)


def adapted_config(upstream_port: int, port: int, folder: Path) -> str:
    """deploy/nginx.conf on 127.0.0.1, writing under `folder`."""
    text = CONFIG.read_text(encoding="utf-8")
    for line in (UPSTREAM, LISTEN, "http {\n"):
        assert text.count(line) == 1, f"deploy/nginx.conf has no single {line!r}"
    temp = "".join(f"    {name}_temp_path {folder / name};\n" for name in TEMP_FOLDERS)
    return (
        text.replace(UPSTREAM, f"server 127.0.0.1:{upstream_port};")
        .replace(LISTEN, f"listen 127.0.0.1:{port};")
        .replace("http {\n", "http {\n" + temp)
    )


@contextlib.contextmanager
def nginx(upstream_port: int, folder: Path) -> Iterator[int]:
    """Debian's nginx with the project's configuration; its port."""
    assert NGINX is not None
    port = free_port()
    config = folder / "nginx.conf"
    config.write_text(adapted_config(upstream_port, port, folder), encoding="utf-8")
    log = folder / "nginx.log"
    command = [
        NGINX,
        *("-c", str(config), "-p", f"{folder}/", "-e", str(log)),
        *("-g", f"pid {folder / 'nginx.pid'}; daemon off;"),
    ]
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output)  # noqa: S603
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield port
    finally:
        # SIGQUIT: nginx's graceful stop; its workers end with the master.
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def answers(port: int) -> bool:
    try:
        return get(port, "/health/live").status == 200
    except OSError:
        return False


@dataclass
class Answer:
    status: int  # 0: no answer within CLIENT_TIMEOUT
    seconds: float


def get(port: int, path: str) -> Answer:
    """GET `path` on a new connection, as a probe does; no answer in time is 0."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return Answer(status, time.monotonic() - started)


@dataclass
class Attack:
    """Connections that send their requests too slowly, until stopped."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    connections: int = 0

    def trickle(self, head: bytes, drip: bytes, every: float) -> None:
        """Send `head`, then `drip` every `every` s; reconnect when dropped."""
        while not self.stop.is_set():
            with (
                contextlib.suppress(OSError),
                socket.create_connection(
                    ("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT
                ) as client,
            ):
                self.connections += 1
                client.sendall(head)
                while not self.stop.wait(every):
                    client.sendall(drip)
            self.stop.wait(0.1)

    def start(self, target: Callable[[], None], count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def slow_clients(attack: Attack) -> None:
    """The review's attack: header lines one by one, bodies a byte at a time."""
    header = b"GET /api/v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body = (
        b"POST /api/v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    attack.start(lambda: attack.trickle(header, b"X-Slow: 1\r\n", 1.0), SLOW_HEADERS)
    attack.start(lambda: attack.trickle(body, b" ", 0.5), SLOW_BODIES)


def keep_asking(port: int, path: str, until: float, answers: list[Answer]) -> None:
    while time.monotonic() < until:
        answers.append(get(port, path))
        time.sleep(0.1)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Any]:
    """Production Gunicorn (1 worker, 4 threads) on a migrated SQLite database."""
    database = f"sqlite:///{tmp_path / 'proxied.db'}"
    variables = {
        "SECRET_KEY": SAFE_SECRET,
        "DATABASE_URL": database,
        # Behind one proxy: the client address is the last X-Forwarded-For entry.
        "TRUSTED_PROXIES": "1",
    }
    flask = {"FLASK_APP": "wsgi", "FLASK_SKIP_DOTENV": "1"}
    subprocess.run(
        [sys.executable, "-m", "flask", "db", "upgrade"],
        cwd=PROJECT,
        env=server_env(0, **variables) | flask,
        capture_output=True,
        timeout=120,
        check=True,
    )
    server = launch(tmp_path, **variables)
    try:
        yield server
    finally:
        server.kill()


@needs_nginx
def test_slow_clients_cannot_starve_the_service_behind_the_proxy(
    gunicorn: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with nginx(gunicorn.port, tmp_path) as port:
        attack = Attack(port)
        slow_clients(attack)
        try:
            time.sleep(1.0)  # every slow connection is open and trickling
            until = time.monotonic() + ATTACK_SECONDS
            probes: list[Answer] = []
            reads: list[Answer] = []
            askers = [
                threading.Thread(target=keep_asking, args=(port, path, until, found))
                for path, found in (("/health/live", probes), ("/api/v1/items", reads))
            ]
            for asker in askers:
                asker.start()
            for asker in askers:
                asker.join(timeout=ATTACK_SECONDS + 30)
        finally:
            attack.end()
    assert attack.connections >= SLOW_HEADERS + SLOW_BODIES
    # A figure to read, not a pass mark.
    with capsys.disabled():
        sys.stdout.write(
            f"\nslow-client attack through nginx ({SLOW_HEADERS} slow headers, "
            f"{SLOW_BODIES} slow bodies, {ATTACK_SECONDS:g} s): {len(probes)} "
            f"liveness probes, p99 {p99([a.seconds for a in probes]) * 1000:.1f} ms; "
            f"{len(reads)} reads, p99 {p99([a.seconds for a in reads]) * 1000:.1f} ms\n"
        )
    assert probes, "no probe was sent"
    assert reads, "no read was sent"
    # Every one answered, within the client's 2 s timeout (0: it gave up).
    assert {answer.status for answer in probes} == {200}, probes
    assert {answer.status for answer in reads} == {200}, reads


@needs_nginx
def test_the_proxy_caps_the_requests_in_progress_per_address(
    gunicorn: Any, tmp_path: Path
) -> None:
    with nginx(gunicorn.port, tmp_path) as port, contextlib.ExitStack() as open_:
        # Bodies still arriving: each is a request in progress at the proxy.
        # A few more than the cap, so that it is reached even if the proxy
        # drops one of them on a loaded machine (the excess get 429 at once).
        for _ in range(IN_PROGRESS_PER_ADDRESS + 8):
            slow = open_.enter_context(
                socket.create_connection(("127.0.0.1", port), timeout=10)
            )
            slow.sendall(
                b"POST /api/v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
        # nginx counts a connection once it has read its request head; the
        # bodies time out after client_body_timeout (10 s): ask until then.
        deadline = time.monotonic() + 8.0
        while True:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health/live")
            answer = connection.getresponse()
            body = answer.read()
            connection.close()
            if answer.status == 429:
                break
            assert answer.status == 200, body
            assert time.monotonic() < deadline, (tmp_path / "nginx.log").read_text()[
                -4000:
            ]
            time.sleep(0.05)
        problem = json.loads(body)
        assert answer.getheader("Retry-After") == "1"
        assert answer.getheader("Content-Type") == "application/problem+json"
        assert problem["title"] == "Too Many Requests"
        assert "in progress at once" in problem["detail"]
    # (The slow bodies are closed: the address is served again; the attack
    # test shows 8 slow bodies leave room for every other request.)


@needs_nginx
def test_the_proxy_answers_its_refusals_as_problems(
    gunicorn: Any, tmp_path: Path
) -> None:
    with nginx(gunicorn.port, tmp_path) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(
            "POST",
            "/api/v1/items",
            body=b"{" + b" " * (1024 * 1024) + b"}",
            headers={"Content-Type": "application/json"},
        )
        too_large = connection.getresponse()
        body = json.loads(too_large.read())
        connection.close()
        # The body limit is MAX_CONTENT_LENGTH's default: nginx refuses more.
        assert too_large.status == 413
        assert too_large.getheader("Content-Type") == "application/problem+json"
        assert body["title"] == "Content Too Large"
        assert body["request_id"] == too_large.getheader("X-Request-ID")
        assert too_large.getheader("X-Content-Type-Options") == "nosniff"
        # Refusals of the request line itself too (nginx has no URI for those),
        # and what nginx answers itself: a TRACE, its own problem page.
        for line, status in (
            (b"GET /" + b"x" * 9000, 414),
            (b"G\x00T /", 400),
            (b"TRACE /", 405),
            (b"GET /.problem", 404),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(line + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = http.client.HTTPResponse(raw)
                answer.begin()
                refusal = json.loads(answer.read())
            assert answer.status == status, refusal
            assert answer.getheader("Content-Type") == "application/problem+json"
            assert refusal["status"] == status
        # With Gunicorn gone, a problem saying when to try again. (Stopped, not
        # killed: SIGKILL to the master leaves its worker serving a while.)
        assert gunicorn.stop() == 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/v1/items")
        gone = connection.getresponse()
        body = json.loads(gone.read())
        connection.close()
        assert (gone.status, gone.getheader("Retry-After")) == (502, "5")
        assert body["detail"] == "The service is not answering; try again shortly."
