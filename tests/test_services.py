"""Services tier: a generated project against real PostgreSQL and a real server.

Needs the machine's PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`).
Every server started here binds to 127.0.0.1, is bounded in time, and is stopped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bakery import Bake, only, project_env, readme_commands

pytestmark = pytest.mark.services

POSTGRES = os.environ.get("KILN_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(
    method: str, url: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw or "null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or "null")


@only("default")
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

    suite_env = {"TEST_DATABASE_URL": make_database()}
    _, test_command = readme_commands(bake)
    result = bake.run(f"{test_command} -p no:cacheprovider", env=suite_env)
    assert " passed" in result.stdout
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
    bake.run(["uv", "sync", "--quiet"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        dev_command,
        shell=True,
        cwd=bake.path,
        env=project_env({"FLASK_RUN_PORT": str(port), "FLASK_RUN_HOST": "127.0.0.1"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                request("GET", f"{base}/health/live")
                break
            except (ConnectionError, urllib.error.URLError):
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

    status, headers, item = request(
        "POST", f"{dev_server}/api/v1/items", {"name": "Widget", "quantity": 3}
    )
    assert status == 201
    assert headers["Location"] == f"/api/v1/items/{item['id']}"

    status, _, page = request("GET", f"{dev_server}/api/v1/items")
    assert status == 200
    assert [entry["name"] for entry in page["items"]] == ["Widget"]

    status, _, _ = request("DELETE", f"{dev_server}/api/v1/items/{item['id']}")
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
