"""Every answer set boots for real, as compose starts it, and answers a smoke.

For each named answer set: the image built outside Docker (tests/test_deploy.py),
the compose migration, then the Dockerfile's CMD (Gunicorn with gunicorn.conf.py)
and, with Celery, the compose worker and beat, each with only what the image's
ENV and its compose service give it. What compose points at other containers
points here at the machine's PostgreSQL, Redis and (for a set whose broker is
RabbitMQ) RabbitMQ, and at an SMTP sink of this module; every such override is
a variable `.env.example` documents. Each process records the environment
variables the project's own code reads (a sitecustomize on PYTHONPATH): one
that neither `.env.example` nor compose provides fails the test by name.
Every server binds 127.0.0.1, every wait is bounded, and every process started
is stopped and looked for afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import test_services
from test_deploy import (
    Image,
    builds_the_image,
    built_image,
    compose,
    dockerfile,
    environment,
    seconds,
    with_celery,
)
from test_services import make_database  # noqa: F401 - a fixture, asked by name

from bakery import Bake

pytestmark = pytest.mark.services

START_TIMEOUT = 120.0
TASK_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0
# Variables every process has that no project file needs to provide.
PLATFORM_VARIABLES = {"PATH", "HOME", "LANG"}
# This module's own: the boot's marker and the read recorder's settings.
HARNESS_PREFIX = "KILN_"
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)

# Imported by every Python process of the boot (PYTHONPATH): records each
# environment variable read or set from a file under KILN_ENV_READS_ROOTS.
RECORDER = '''\
"""Kiln's boot test: which environment variables the project's code reads."""

import _collections_abc
import json
import os
import sys

_LOG = os.environ.get("KILN_ENV_READS")
_ROOTS = tuple(
    root for root in os.environ.get("KILN_ENV_READS_ROOTS", "").split(os.pathsep)
    if root
)
_SKIP = {
    os.__file__, _collections_abc.__file__, __file__,
    "<frozen os>", "<frozen _collections_abc>",
}
_seen = set()


def _record(kind, name):
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in _SKIP:
        frame = frame.f_back
    if frame is None:
        return
    where = frame.f_code.co_filename
    root = next((root for root in _ROOTS if where.startswith(root)), None)
    if root is None or (kind, name, where) in _seen:
        return
    _seen.add((kind, name, where))
    place = f"{where[len(root):]}:{frame.f_lineno}"
    line = {"kind": kind, "name": name, "where": place}
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\\n")


if _LOG and _ROOTS:
    _get, _set = os._Environ.__getitem__, os._Environ.__setitem__

    def _getitem(self, key):
        if self is os.environ:
            _record("read", key)
        return _get(self, key)

    def _setitem(self, key, value):
        if self is os.environ:
            _record("set", key)
        return _set(self, key, value)

    os._Environ.__getitem__ = _getitem
    os._Environ.__setitem__ = _setitem
'''


# --- An SMTP sink on 127.0.0.1, standing in for compose's Mailpit ------------


class SmtpSink(socketserver.ThreadingTCPServer):
    """Accepts every message (the few commands smtplib sends) and keeps it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SmtpSession)
        self.port: int = self.server_address[1]
        self.recipients: list[str] = []
        self.lock = threading.Lock()

    def received(self, recipients: list[str]) -> None:
        with self.lock:
            self.recipients += recipients


class SmtpSession(socketserver.StreamRequestHandler):
    timeout = 30
    server: SmtpSink

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 kiln-sink ESMTP")
        recipients: list[str] = []
        while raw := self.rfile.readline(65536):
            verb = raw.decode("utf-8", "replace").strip().split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-kiln-sink")
                self.reply("250-8BITMIME")
                self.reply("250 SMTPUTF8")
            elif verb == "RCPT":
                found = re.search(rb"<([^>]*)>", raw)
                recipients.append(found.group(1).decode() if found else "")
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                while self.rfile.readline(65536) not in (b".\r\n", b""):
                    pass
                self.server.received(recipients)
                recipients = []
                self.reply("250 OK: queued")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            elif verb in {"HELO", "MAIL", "RSET", "NOOP"}:
                self.reply("250 OK")
            else:
                self.reply("502 Command not implemented")


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    yield sink
    sink.shutdown()
    sink.server_close()
    thread.join(timeout=5)


# --- Compose, read as `docker compose` reads it -----------------------------


INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, given: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?message} and $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        how, default = match.group(2), match.group(3) or ""
        found = given.get(name)
        if how in {":-", ":?"} and not found:
            found = None
        if found is not None:
            return found
        assert how not in {":?", "?"}, f"compose needs {name}: {default}"
        return default if how in {":-", "-"} else ""

    return INTERPOLATION.sub(one, value)


def documented_variables(bake: Bake) -> set[str]:
    """Every variable `.env.example` names, set or commented out."""
    text = (bake.path / ".env.example").read_text(encoding="utf-8")
    return set(ENV_LINE.findall(text))


@dataclass
class Process:
    """One compose service's process, started here."""

    service: str
    popen: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    grace: float

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass
class Stack:
    """The running services of one answer set, and what they were given."""

    bake: Bake
    image: Image
    base: str
    given: dict[str, dict[str, str]]  # per service, what was overridden here
    # Where the processes record the variables they read.
    reads_log: Path
    # In every process's environment: finds them all, children included.
    marker: str
    processes: dict[str, Process] = field(default_factory=dict)

    def env(self, service: str) -> dict[str, str]:
        return self.processes[service].env

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{process.output()[-3000:]}"
            for name, process in self.processes.items()
        )


def fresh_database(request: pytest.FixtureRequest) -> str:
    """An empty PostgreSQL database, dropped after the test (test_services)."""
    create: Callable[[], str] = request.getfixturevalue("make_database")
    return create()


def recorder_roots(image: Image, package: str) -> list[str]:
    """The project's own files: the image's WORKDIR and the installed package."""
    found = sorted(image.venv.glob(f"lib/python*/site-packages/{package}"))
    assert found, f"{package} is not installed in the image's environment"
    return [f"{image.root}{os.sep}", f"{found[0]}{os.sep}"]


def service_environments(
    bake: Bake, image: Image, scratch: Path, backends: dict[str, str]
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """Each image service's environment, as compose gives it, moved here; and,
    per service, the values overridden to reach this machine's backends."""
    spec = compose(bake)
    key_file = test_services.make_signing_key(scratch / "jwt-private-key.pem", 2048)
    env_file = (bake.path / ".env").read_text(encoding="utf-8")
    secret_key = re.search(r"^SECRET_KEY=(\S+)$", env_file, re.MULTILINE)
    assert secret_key, ".env has no SECRET_KEY"
    # What compose reads from the shell or the .env file beside it.
    shell = {
        "SECRET_KEY": secret_key.group(1),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "JWT_PRIVATE_KEY_FILE": str(key_file),
    }
    mounted = {
        f"/run/secrets/{name}": interpolate(secret["file"], shell)
        for name, secret in spec.get("secrets", {}).items()
    }
    environments: dict[str, dict[str, str]] = {}
    overrides: dict[str, dict[str, str]] = {}
    for name, service in spec["services"].items():
        if not builds_the_image(service):
            continue
        declared = {
            variable: interpolate(str(value), shell)
            for variable, value in service.get("environment", {}).items()
        }
        changed = {
            variable: mounted.get(value, value)
            for variable, value in declared.items()
            if value in mounted
        }
        changed |= {
            "DATABASE_URL": backends["database"],
            "REDIS_URL": backends["redis"],
            "REDIS_KEY_PREFIX": backends["prefix"],
            "METRICS_TOKEN": backends["metrics_token"],
            # Each container has its own /app/var (beat's is a volume).
            "INSTANCE_PATH": str(scratch / f"var-{name}"),
        }
        if "MAIL_HOST" in declared:
            changed |= {"MAIL_HOST": "127.0.0.1", "MAIL_PORT": backends["smtp_port"]}
        if "CELERY_METRICS_PORT" in declared:
            changed |= {
                "CELERY_METRICS_HOST": "127.0.0.1",
                "CELERY_METRICS_PORT": str(test_services.free_port()),
            }
        if "PROMETHEUS_MULTIPROC_DIR" in declared:
            changed["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / f"metrics-{name}")
        if backends.get("broker"):
            changed["CELERY_BROKER_URL"] = backends["broker"]
        Path(changed["INSTANCE_PATH"]).mkdir(exist_ok=True)
        environments[name] = image.env | declared | changed
        overrides[name] = changed
    return environments, overrides


def start(
    stack: Stack,
    service: str,
    command: list[str],
    env: dict[str, str],
    scratch: Path,
    grace: float,
) -> Process:
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable, f"{command[0]} is not on the image's PATH"
    assert Path(executable).is_relative_to(stack.image.venv), executable
    log = scratch / f"{service}.log"
    with log.open("wb") as output:
        popen = subprocess.Popen(
            command,
            cwd=stack.image.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = Process(service, popen, log, env, grace)
    stack.processes[service] = process
    return process


def run_in(
    stack: Stack, service: str, command: list[str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A command in a service's container (`docker compose exec`)."""
    return subprocess.run(
        command,
        cwd=stack.image.root,
        env=stack.env(service),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fetch(
    stack: Stack,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    return test_services.request_raw(method, f"{stack.base}{path}", body, headers)


def fetch_json(
    stack: Stack,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    status, _, answer = test_services.request(
        method, f"{stack.base}{path}", body, headers
    )
    return status, answer


def wait_until(
    stack: Stack, what: str, ready: Callable[[], bool], timeout: float
) -> None:
    """Poll `ready` until it holds; fail naming `what` (with the logs) if a
    process dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if ready():
                return
        for process in stack.processes.values():
            assert process.popen.poll() is None, (
                f"{process.service} exited while waiting for {what}\n{stack.logs()}"
            )
        assert time.monotonic() < deadline, (
            f"no {what} in {timeout:g} s\n{stack.logs()}"
        )
        time.sleep(0.25)


def stop(process: Process) -> int:
    """SIGTERM, as `docker compose stop` sends it; SIGKILL after the grace."""
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGTERM)
    try:
        return process.popen.wait(timeout=process.grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=30)
        return -signal.SIGKILL


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries this boot's marker."""
    needle = f"KILN_BOOT={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


@pytest.fixture
def stack(
    bake: Bake,
    request: pytest.FixtureRequest,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The answer set's services, started as compose starts them."""
    image = built_image(bake, tmp_path_factory)
    spec = compose(bake)
    backends = {
        "database": fresh_database(request),
        "redis": test_services.REDIS,
        "prefix": f"kiln-boot-{secrets.token_hex(6)}",
        "metrics_token": secrets.token_urlsafe(32),
        "smtp_port": str(smtp_sink.port),
    }
    if with_celery(bake) and bake.answer_set.broker == "rabbitmq":
        backends["broker"] = test_services.RABBITMQ
    environments, overrides = service_environments(bake, image, tmp_path, backends)
    port = test_services.free_port()
    stack = Stack(
        bake,
        image,
        f"http://127.0.0.1:{port}",
        overrides,
        reads_log=tmp_path / "environment-reads.jsonl",
        marker=secrets.token_hex(8),
    )
    recorder = tmp_path / "recorder"
    recorder.mkdir()
    (recorder / "sitecustomize.py").write_text(RECORDER, encoding="utf-8")
    harness = {
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(recorder),
        "KILN_BOOT": stack.marker,
        "KILN_ENV_READS": str(stack.reads_log),
        "KILN_ENV_READS_ROOTS": os.pathsep.join(recorder_roots(image, bake.package)),
    }
    for name in environments:
        environments[name] |= harness
    # gunicorn.conf.py binds every interface, as a container needs; here the
    # loopback only (Gunicorn's own variable, not the project's).
    environments["web"] |= {
        "PORT": str(port),
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}",
    }

    migrate = subprocess.run(
        spec["services"]["migrate"]["command"],
        cwd=image.root,
        env=environments["migrate"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]

    grace = {
        name: seconds(service.get("stop_grace_period", "10s"))
        for name, service in spec["services"].items()
    }
    try:
        start(
            stack,
            "web",
            dockerfile(bake)[-1].exec_form("CMD"),
            environments["web"],
            tmp_path,
            grace["web"],
        )
        if with_celery(bake):
            for name in ("worker", "beat"):
                start(
                    stack,
                    name,
                    spec["services"][name]["command"],
                    environments[name],
                    tmp_path,
                    grace[name],
                )
        yield stack
    finally:
        for process in stack.processes.values():
            if process.popen.poll() is None:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=30)
        for pid in marked_processes(stack.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with redis.Redis.from_url(test_services.REDIS) as client:
            for key in client.scan_iter(f"{backends['prefix']}:*"):
                client.delete(key)


def healthcheck_command(spec: dict[str, Any], service: str) -> list[str]:
    """A compose healthcheck's test (exec form), as argv."""
    test = spec["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return list(test[1:])


def test_every_process_boots_serves_and_stops(
    stack: Stack, smtp_sink: SmtpSink
) -> None:
    bake, spec = stack.bake, compose(stack.bake)
    celery = with_celery(bake)

    # --- Up and ready, every configured backend named and passing.
    wait_until(
        stack,
        "200 from /health/live",
        lambda: fetch(stack, "GET", "/health/live")[0] == 200,
        START_TIMEOUT,
    )
    expected = {"database", "redis"} | ({"broker", "workers"} if celery else set())
    report: dict[str, Any] = {}

    # Production shows the checks to a reader of /metrics only.
    metrics = {"Authorization": f"Bearer {stack.env('web')['METRICS_TOKEN']}"}

    def all_pass() -> bool:
        status, body = fetch_json(stack, "GET", "/health/ready", None, metrics)
        report.update(body or {})
        checks = (body or {}).get("checks", {})
        return status == 200 and all(
            checks.get(name, {}).get("status") == "pass" for name in expected
        )

    wait_until(stack, f"ready report passing {sorted(expected)}", all_pass, 60)
    assert set(report["checks"]) == expected, report
    status, public = fetch_json(stack, "GET", "/health/ready")
    assert status == 200, public
    assert public["status"] == "pass", public
    assert public.get("checks") is None, public

    # --- An operator's account through the CLI, then the API with its token.
    account = {"email": "ops@example.com", "password": "kiln-boot-operator-42"}
    created = run_in(
        stack,
        "web",
        [
            "flask",
            "create-user",
            f"--email={account['email']}",
            f"--password={account['password']}",
        ],
    )
    assert created.returncode == 0, created.stdout + created.stderr
    status, pair = fetch_json(stack, "POST", "/api/v1/auth/token", account)
    assert status == 200, pair
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    status, item = fetch_json(
        stack, "POST", "/api/v1/items", {"name": "Booted", "quantity": 2}, bearer
    )
    assert status == 201, item
    key = run_in(
        stack,
        "web",
        [
            "flask",
            "create-api-key",
            f"--email={account['email']}",
            "--name=boot",
            "--scope=read",
            "--scope=write",
        ],
    )
    assert key.returncode == 0, key.stdout + key.stderr
    keyed = {"X-API-Key": key.stdout.strip()}
    status, _ = fetch_json(stack, "POST", "/api/v1/items", {"name": "Keyed"}, keyed)
    assert status == 201
    status, page = fetch_json(stack, "GET", "/api/v1/items")
    assert status == 200
    assert {entry["name"] for entry in page["items"]} == {"Booted", "Keyed"}

    # --- A task enqueued through the API completes on the worker.
    if celery:
        newcomer = {"email": "newcomer@example.com", "password": "kiln-boot-new-77"}
        status, _ = fetch_json(stack, "POST", "/api/v1/auth/register", newcomer)
        assert status == 201
        wait_until(
            stack,
            "welcome e-mail sent by the worker",
            lambda: newcomer["email"] in smtp_sink.recipients,
            TASK_TIMEOUT,
        )
        assert "send_welcome_email" in stack.processes["worker"].output()
        # The compose healthchecks of the worker and beat pass.
        for name in ("worker", "beat"):
            command = healthcheck_command(spec, name)
            timeout = seconds(spec["services"][name]["healthcheck"]["timeout"])
            result = run_in(stack, name, command, timeout=timeout)
            assert result.returncode == 0, (name, result.stdout, result.stderr)

    # --- The image's HEALTHCHECK, and /metrics for its allowed caller only.
    runtime = dockerfile(bake)[-1]
    health = runtime.exec_form("HEALTHCHECK")
    options = dict(
        re.findall(r"--([\w-]+)=(\S+)", runtime.arguments("HEALTHCHECK")[-1])
    )
    health_timeout = seconds(options["timeout"])
    assert run_in(stack, "web", health, timeout=health_timeout).returncode == 0
    token = stack.env("web")["METRICS_TOKEN"]
    status, headers, raw = fetch(
        stack, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert b'route="/api/v1/items"' in raw
    assert fetch(stack, "GET", "/metrics")[0] in {401, 403}

    # --- Stop everything as compose does; nothing is left behind.
    for name in reversed(list(stack.processes)):
        process = stack.processes[name]
        assert stop(process) == 0, f"{name} did not stop cleanly\n{process.output()}"
    deadline = time.monotonic() + 15
    while leftover := marked_processes(stack.marker):
        assert time.monotonic() < deadline, f"processes left behind: {leftover}"
        time.sleep(0.2)
    assert run_in(stack, "web", health, timeout=health_timeout).returncode != 0

    # --- What the code read is what .env.example and compose provide.
    undocumented_reads(stack)


def undocumented_reads(stack: Stack) -> None:
    """Fail naming every variable the project's code read (during the whole
    boot) that neither `.env.example` nor compose nor the image provides."""
    documented = documented_variables(stack.bake)
    image_env = set(environment(dockerfile(stack.bake)[-1], {}))
    composed = {
        name
        for service in compose(stack.bake)["services"].values()
        for name in service.get("environment", {})
    }
    lines = [
        json.loads(line)
        for line in stack.reads_log.read_text(encoding="utf-8").splitlines()
    ]
    assert lines, "the recorder saw no read: it is not installed"
    written = {line["name"] for line in lines if line["kind"] == "set"}
    reads: dict[str, set[str]] = {}
    for line in lines:
        if line["kind"] == "read":
            reads.setdefault(line["name"], set()).add(line["where"])
    known = documented | composed | image_env | written | PLATFORM_VARIABLES
    missing = {
        name: sorted(where)
        for name, where in reads.items()
        if name not in known and not name.startswith(HARNESS_PREFIX)
    }
    assert not missing, (
        "the code reads variables that neither .env.example nor compose.yaml "
        f"provides: {json.dumps(missing, indent=1)}"
    )
    # And what this test overrode was documented, not invented here.
    for service, changed in stack.given.items():
        invented = set(changed) - documented - composed - image_env
        assert not invented, f"{service}: {sorted(invented)} not in .env.example"
    # The recorder saw the configuration being read (it works).
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= set(reads), sorted(reads)
