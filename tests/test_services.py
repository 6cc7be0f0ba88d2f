"""Services tier: a generated project against real PostgreSQL and a real server.

Needs the machine's PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`).
Every server started here binds to 127.0.0.1, is bounded in time, and is stopped.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from bakery import Bake, only, readme_commands

pytestmark = pytest.mark.services

POSTGRES = os.environ.get("KILN_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
# The machine's Redis; every project run here writes under a prefix of its own.
REDIS = os.environ.get("KILN_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ = os.environ.get("KILN_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
SERVER_START_TIMEOUT = 90.0
REQUEST_TIMEOUT = 10.0


def postgres_admin(statement: str) -> None:
    with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as connection:
        connection.execute(statement)


@pytest.fixture
def make_database() -> Iterator[Callable[[], str]]:
    """Create fresh, empty PostgreSQL databases; all are dropped afterwards."""
    names: list[str] = []

    def create() -> str:
        names.append(f"kiln_{secrets.token_hex(6)}")
        postgres_admin(f'CREATE DATABASE "{names[-1]}"')
        return f"{POSTGRES}/{names[-1]}"

    yield create
    for name in names:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_signing_key(path: Path, bits: int = 3072) -> Path:
    """An RSA private key (PEM) made with openssl, as the README shows."""
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm=RSA",
            f"-pkeyopt=rsa_keygen_bits:{bits}",
            f"-out={path}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(
    method: str,
    url: str,
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """Send one request; the status, headers and JSON answer."""
    status, received, raw = request_raw(method, url, body, headers)
    return status, received, json.loads(raw or "null")


def request_raw(
    method: str,
    url: str,
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send one request; the status, headers and body as sent.

    A server may answer (413) and close before a large body is sent whole: the
    answer is read all the same, as a client reading while it sends would.
    """
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        parsed.hostname or "127.0.0.1", parsed.port, timeout=REQUEST_TIMEOUT
    )
    try:
        connection.putrequest(method, parsed.path or "/")
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if data is not None:
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(len(data)))
        connection.endheaders()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if data:
                connection.send(data)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_migrations_and_test_suite_on_postgresql(
    bake: Bake, make_database: Callable[[], str]
) -> None:
    database = make_database()
    bake.run(["uv", "run", "flask", "db", "upgrade"], env={"DATABASE_URL": database})
    with psycopg.connect(database) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        version = connection.execute(
            "SELECT version_num FROM alembic_version"
        ).fetchone()
    assert {"items", "alembic_version"} <= tables
    assert version is not None

    suite_env = {
        "TEST_DATABASE_URL": make_database(),
        "TEST_REDIS_URL": REDIS,
        # Celery's worker tests (tests/test_worker.py) run over RabbitMQ too.
        "TEST_RABBITMQ_URL": RABBITMQ,
    }
    _, test_command = readme_commands(bake)
    # The `standalone` tests start the project's commands on SQLite files of
    # their own: they ran as they would here in the embedded tier's run.
    result = bake.run(
        f'{test_command} -p no:cacheprovider -m "not standalone or services"',
        env=suite_env,
    )
    assert " passed" in result.stdout
    # With PostgreSQL and Redis given, every test of the tier runs: none may
    # skip for want of a service.
    skipped = [line for line in result.stdout.splitlines() if "SKIPPED" in line]
    assert not skipped, skipped
    assert (
        "postgresql"
        in bake.run(
            [
                "uv",
                "run",
                "python",
                "-c",
                f"from {bake.package} import create_app;"
                "print(create_app('testing').config['SQLALCHEMY_DATABASE_URI'])",
            ],
            env=suite_env,
        ).stdout
    )


@pytest.fixture
def dev_server(bake: Bake) -> Iterator[str]:
    """The README's development-server command, running on a free local port."""
    dev_command, _ = readme_commands(bake)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # On the bake's Python (in its chroot, if it has one), in a session of its own.
    server = bake.popen(
        dev_command,
        env={"FLASK_RUN_PORT": str(port), "FLASK_RUN_HOST": "127.0.0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                request("GET", f"{base}/health/live")
                break
            except OSError:
                assert server.poll() is None, "the dev server exited early"
                assert time.monotonic() < deadline, "the dev server did not start"
                time.sleep(0.25)
        yield base
    finally:
        # The reloader runs the server in a child: stop the whole group.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


@only("default")
def test_readme_dev_server_serves_the_api(dev_server: str) -> None:
    status, _, body = request("GET", f"{dev_server}/health/live")
    assert (status, body) == (200, {"status": "pass", "checks": {}})

    # A new user signs up and signs in, as the README shows.
    account = {"email": "first@example.com", "password": "kiln-first-run-42"}
    status, _, _ = request("POST", f"{dev_server}/api/v1/auth/register", account)
    assert status == 201
    status, _, pair = request("POST", f"{dev_server}/api/v1/auth/token", account)
    assert status == 200
    signed_in = {"Authorization": f"Bearer {pair['access_token']}"}

    status, headers, item = request(
        "POST",
        f"{dev_server}/api/v1/items",
        {"name": "Widget", "quantity": 3},
        signed_in,
    )
    assert status == 201
    assert headers["Location"] == f"/api/v1/items/{item['id']}"

    status, _, page = request("GET", f"{dev_server}/api/v1/items")
    assert status == 200
    assert [entry["name"] for entry in page["items"]] == ["Widget"]

    status, _, _ = request(
        "DELETE", f"{dev_server}/api/v1/items/{item['id']}", headers=signed_in
    )
    assert status == 204
    status, _, problem = request("GET", f"{dev_server}/api/v1/items/{item['id']}")
    assert status == 404
    assert problem["status"] == 404

    status, _, startup = request("GET", f"{dev_server}/health/startup")
    assert (status, startup["status"]) == (200, "pass")


@only("default")
def test_api_docs_render_in_a_browser_without_network(
    dev_server: str, tmp_path: Path
) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    # Chromium's own networking is off, and the page may only reach this server:
    # if the docs needed a CDN, Swagger UI would not render.
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{dev_server}/api/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rendered_paths = set(re.findall(r'data-path="([^"]+)"', result.stdout))
    assert {"/api/v1/items", "/api/v1/items/{item_id}", "/health/ready"} <= (
        rendered_paths
    )
    assert re.search(r'<h2 class="title">My Service API', result.stdout)


@dataclass
class ProductionServer:
    base: str
    process: subprocess.Popen[bytes]
    database: str
    # Headers of an operator-made account: its read-write API key.
    writer: dict[str, str]


@pytest.fixture
def production_server(
    bake: Bake, make_database: Callable[[], str], tmp_path: Path
) -> Iterator[ProductionServer]:
    """The generated project as production runs it: migrated PostgreSQL, Redis,
    a signing key made with openssl, an account made with the CLI, then Gunicorn
    with gunicorn.conf.py, two workers, APP_ENV=production."""
    database = make_database()
    signing_key = make_signing_key(tmp_path / "jwt-private-key.pem")
    env = {
        "APP_ENV": "production",
        "DATABASE_URL": database,
        "REDIS_URL": REDIS,
        "REDIS_KEY_PREFIX": f"kiln-{secrets.token_hex(6)}",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "JWT_PRIVATE_KEY_FILE": str(signing_key),
        "FLASK_SKIP_DOTENV": "1",
        # The tests here race several clients on purpose: room for all of them,
        # so every answer is the API's own, not a designed 429 or 503.
        "POLICY_LIMIT_READ": "100000 per minute",
        "POLICY_LIMIT_WRITE": "100000 per minute",
        "GUNICORN_THREADS": "8",
        # Production refuses to write mail into its logs; no worker runs here,
        # so the queued welcome e-mails are never sent.
        "MAIL_BACKEND": "smtp",
        "MAIL_HOST": "127.0.0.1",
    }
    bake.run(["uv", "run", "flask", "db", "upgrade"], env=env)
    bake.run(
        [
            "uv",
            "run",
            "flask",
            "create-user",
            "--email=ops@example.com",
            "--password=kiln-operator-77",
        ],
        env=env,
    )
    api_key = bake.run(
        [
            "uv",
            "run",
            "flask",
            "create-api-key",
            "--email=ops@example.com",
            "--name=smoke",
            "--scope=read",
            "--scope=write",
        ],
        env=env,
    ).stdout.strip()
    port = free_port()
    # The environment's own gunicorn, so that signals reach it directly.
    gunicorn = str(bake.path / ".venv" / "bin" / "gunicorn")
    # A file, not a pipe: nobody reads while the tests run, and a full pipe
    # would stop the workers at their next log line.
    log = tmp_path / "gunicorn.log"
    log_file = log.open("w")
    server = bake.popen(
        [gunicorn, "-c", "gunicorn.conf.py", "wsgi:application"],
        env=env
        | {"WEB_CONCURRENCY": "2", "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                request("GET", f"{base}/health/ready")
                break
            except OSError:
                assert server.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.25)
        yield ProductionServer(base, server, database, {"X-API-Key": api_key})
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log_file.close()
        with redis.Redis.from_url(REDIS) as client:
            for key in client.scan_iter(f"{env['REDIS_KEY_PREFIX']}:*"):
                client.delete(key)


@only("default")
def test_production_server_on_postgresql(production_server: ProductionServer) -> None:
    base, server = production_server.base, production_server.process
    status, _, ready = request("GET", f"{base}/health/startup")
    assert (status, ready["status"]) == (200, "pass")

    writer = production_server.writer
    status, _, _ = request("POST", f"{base}/api/v1/items", {"name": "Pg"})
    assert status == 401
    status, headers, _ = request("POST", f"{base}/api/v1/items", {"name": "Pg"}, writer)
    assert status == 201
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    status, _, problem = request(
        "POST",
        f"{base}/api/v1/items",
        b'{"name": "x"}' + b" " * (2 * 1024 * 1024),
        writer,
    )
    assert (status, problem["status"]) == (413, 413)
    status, _, page = request("GET", f"{base}/api/v1/items")
    assert [entry["name"] for entry in page["items"]] == ["Pg"]

    # SIGTERM, as an orchestrator stops the container: a clean exit.
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0


@only("default")
def test_writes_racing_deletes_get_no_5xx(production_server: ProductionServer) -> None:
    items = f"{production_server.base}/api/v1/items"
    writer = production_server.writer
    statuses: list[int] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(40):
            _, _, item = request("POST", items, {"name": "Raced"}, writer)
            url = f"{items}/{item['id']}"
            racers = [
                pool.submit(request, "PATCH", url, {"quantity": 1}, writer),
                pool.submit(request, "DELETE", url, None, writer),
                pool.submit(request, "PATCH", url, {"name": "Again"}, writer),
                pool.submit(request, "DELETE", url, None, writer),
            ]
            statuses += [racer.result()[0] for racer in racers]
    assert set(statuses) <= {200, 204, 404}, sorted(statuses)
    assert statuses.count(204) == 40  # each item was deleted exactly once


@only("default")
def test_a_read_only_database_is_a_503(production_server: ProductionServer) -> None:
    # What a failover looks like from the application: the server is a standby.
    name = production_server.database.rsplit("/", 1)[1]
    postgres_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    postgres_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    try:
        items = f"{production_server.base}/api/v1/items"
        for _ in range(3):
            status, headers, problem = request(
                "POST", items, {"name": "Nope"}, production_server.writer
            )
            assert (status, problem["status"]) == (503, 503)
            assert headers["Retry-After"] == "5"
        assert request("GET", items)[0] == 200
    finally:
        postgres_admin(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
