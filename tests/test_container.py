"""The image built and run, and compose started, on a real Docker engine.

For the default answer set and the set with every option on, each on a Python
Debian ships (3.13 or 3.14; no 3.12 or 3.11 image is built here), on the private
engine and the stand-in images of tests/containers.py:

- `uv lock`, then `docker build --network host --build-arg PYTHON_VERSION=...`
  as `make docker` runs it (on the host's network: this engine has no
  default bridge);
- the image alone: GET /health/live through a port published on 127.0.0.1,
  its HEALTHCHECK turning healthy, and `docker stop` ending it with status 0
  within compose's grace period for the web server;
- compose.yaml as generated, with an override in the test's folder that only
  shortens healthcheck intervals, builds on the host's network and gives web a
  METRICS_TOKEN (production shows the readiness checks to its bearer only):
  `docker compose build` and `up --wait` (the README's `up --build --wait`),
  then, through nginx (the only published port), /health/ready passing, an
  over-long request line refused by nginx in the API's error shape, a sign-up
  whose welcome
  e-mail the Celery worker delivers to the Mailpit stand-in, a token and a
  write;
- `docker compose stop` (every service exits 0) and `down --volumes`, after
  which no container, network, volume, mount or engine process is left.

Every wait is bounded, and the timings are printed (`-rP` or `-s` shows them).
For every set, and without an engine, the Dockerfile is checked to need no
registry to be read and to build with buildah and podman too.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_services
from test_deploy import (
    answer,
    builds_the_image,
    compose,
    dockerfile,
    run_flags,
    seconds,
    with_celery,
)

import containers
from answer_sets import ANSWER_SETS, AnswerSet
from bakery import Bake, only, run
from containers import Engine

# The yes/no prompts, each on in the all-on set.
SWITCHES = {
    "web_ui": "yes",
    "use_oauth": "yes",
    "use_celery": "yes",
    "use_opentelemetry": "yes",
    "ci": "github",
}
BUILD_TIMEOUT = 900.0
HEALTHY_TIMEOUT = 120.0
COMPOSE_UP_TIMEOUT = 420.0
READY_TIMEOUT = 60.0
MAIL_TIMEOUT = 60.0
UV_IMAGE = re.compile(r"ghcr\.io/astral-sh/uv:(\d+\.\d+\.\d+)")


def all_on(answer_set: AnswerSet) -> bool:
    return all(answer(answer_set, name) == on for name, on in SWITCHES.items())


# The default set and every set with all options on.
CONTAINER_SETS = [
    name
    for name, answer_set in ANSWER_SETS.items()
    if name == "default" or all_on(answer_set)
]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """The private engine, stopped and swept however the test ends."""
    with containers.engine(tmp_path / "dockerd.log") as started:
        yield started


@contextlib.contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        timings[step] = time.monotonic() - began
        print(f"{step}: {timings[step]:.1f} s")


def wait_for(what: str, ready: Callable[[], bool], timeout: float) -> None:
    """Poll `ready` (connection errors count as not yet) for at most `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} in {timeout:g} s", pytrace=False)
        time.sleep(0.5)


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, body = test_services.request("GET", url, headers=headers)
    return status, body


def state(engine: Engine, container: str) -> dict[str, Any]:
    found = engine.docker("inspect", "--format", "{{json .State}}", container)
    loaded: dict[str, Any] = json.loads(found.stdout)
    return loaded


def test_container_sets_are_the_default_and_all_on() -> None:
    assert CONTAINER_SETS[0] == "default"
    assert len(CONTAINER_SETS) >= 2, CONTAINER_SETS
    assert all(all_on(ANSWER_SETS[name]) for name in CONTAINER_SETS[1:])


def test_dockerfile_reads_offline_and_binds_absolute_paths(bake: Bake) -> None:
    """No `# syntax=` line (BuildKit would fetch that frontend image from a
    registry; its own frontend reads the file), and bind mounts at absolute
    targets (buildah and podman resolve no relative one)."""
    text = (bake.path / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    binds = [
        mount
        for stage in dockerfile(bake)
        for command in stage.arguments("RUN")
        for mount in run_flags(command)[0]
        if mount.get("type") == "bind"
    ]
    assert binds, "the Dockerfile binds nothing: the test reads it wrong"
    assert [mount for mount in binds if not mount["target"].startswith("/")] == []


@pytest.mark.services
@only(*CONTAINER_SETS)
def test_image_runs_and_compose_serves(
    bake: Bake, engine: Engine, tmp_path: Path
) -> None:
    python_version = answer(bake.answer_set, "python_version")
    assert python_version in containers.PYTHON_SUITES, (
        f"the {bake.answer_set.name} set is on Python {python_version}, which no "
        "Debian release ships, so no base image for it can be made here: move "
        f"the set to one of {sorted(containers.PYTHON_SUITES)} "
        "(tests/answer_sets.py)"
    )
    spec = compose(bake)
    celery = with_celery(bake)
    image = spec["services"]["web"]["image"]
    timings: dict[str, float] = {}
    uv_version = UV_IMAGE.search((bake.path / "Dockerfile").read_text("utf-8"))
    assert uv_version, "the Dockerfile takes uv from no pinned ghcr.io image"

    # --- The base images, made here (once per machine, then reused).
    with timed(timings, "base images"):
        made = [
            containers.python_image(engine, python_version),
            containers.uv_image(engine, uv_version.group(1)),
            containers.service_images(engine),
        ]

    # --- The build, as `make docker` runs it (the lock file first).
    run(["uv", "lock", "--quiet"], cwd=bake.path)
    with timed(timings, "build"):
        built = engine.docker(
            "build",
            "--network=host",
            f"--build-arg=PYTHON_VERSION={python_version}",
            f"--tag={image}",
            ".",
            cwd=bake.path,
            timeout=BUILD_TIMEOUT,
        )
    steps = re.findall(r"^#\d+ \[(?:builder|runtime) +\d+/\d+\]", built.stderr, re.M)
    cached = re.findall(r"^#\d+ CACHED$", built.stderr, re.M)
    config = json.loads(
        engine.docker("image", "inspect", "--format", "{{json .Config}}", image).stdout
    )
    assert config["User"] == "10001:10001", config["User"]
    assert config["Healthcheck"]["Test"][0] == "CMD", config["Healthcheck"]

    # --- The image alone: live, healthy, and stopped within the grace period.
    key_file = test_services.make_signing_key(tmp_path / "jwt-private-key.pem", 2048)
    key_file.chmod(0o644)  # uid 10001 in the containers reads it
    secret_key = secrets.token_urlsafe(48)
    grace = seconds(spec["services"]["web"]["stop_grace_period"])
    network = f"kiln-run-{secrets.token_hex(4)}"
    container = f"kiln-web-{secrets.token_hex(4)}"
    port = test_services.free_port()
    alone = {
        "SECRET_KEY": secret_key,
        "JWT_PRIVATE_KEY": key_file.read_text(encoding="utf-8"),
        "DATABASE_URL": "sqlite:////app/var/alone.db",
        "WEB_CONCURRENCY": "1",
    }
    if celery:
        # Production refuses to start without a broker; liveness never asks it.
        alone["CELERY_BROKER_URL"] = "redis://broker.invalid:6379/0"
        # Nor with mail written into its logs (MAIL_BACKEND's default).
        alone["MAIL_BACKEND"] = "smtp"
        alone["MAIL_HOST"] = "mail.invalid"
    engine.docker("network", "create", network)
    with timed(timings, "run to healthy"):
        engine.docker(
            "run",
            "--detach",
            f"--name={container}",
            f"--network={network}",
            f"--publish=127.0.0.1:{port}:8000",
            "--health-interval=1s",
            *(f"--env={name}" for name in alone),
            image,
            env=alone,
        )

        def healthy() -> bool:
            now = state(engine, container)
            assert now["Running"], engine.docker("logs", container).stderr[-3000:]
            status = now["Health"]["Status"]
            assert status != "unhealthy", now["Health"]
            return bool(status == "healthy")

        wait_for(f"healthy {container}", healthy, HEALTHY_TIMEOUT)
    status, body = get_json(f"http://127.0.0.1:{port}/health/live")
    assert (status, body["status"]) == (200, "pass"), body
    with timed(timings, "docker stop"):
        engine.docker("stop", f"--time={grace:g}", container, timeout=grace + 30)
    stopped = state(engine, container)
    logs = engine.docker("logs", container)
    assert (stopped["ExitCode"], stopped["OOMKilled"]) == (0, False), logs.stderr
    assert timings["docker stop"] < grace, logs.stderr[-3000:]
    engine.docker("rm", container)
    engine.docker("network", "rm", network)

    # --- compose.yaml as generated, with the stand-ins.
    web_port = test_services.free_port()
    variables = {
        "SECRET_KEY": secret_key,
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "JWT_PRIVATE_KEY_FILE": str(key_file),
        "WEB_PORT": str(web_port),
    }
    mail_port = 0
    if celery:
        mail_port = test_services.free_port()
        variables["MAILPIT_PORT"] = str(mail_port)
    # What this machine needs of compose beyond the generated file: shorter
    # healthcheck intervals (the image's HEALTHCHECK for web), and the image's
    # build on the host's network, as above (the engine has no default bridge,
    # and a RUN's network is part of its cache key: the build above is reused).
    services: dict[str, dict[str, Any]] = {}
    for name, service in spec["services"].items():
        services[name] = {}
        check = service.get("healthcheck", {})
        if not check.get("disable"):
            # A `flask tasks ...-alive` check starts the app (seconds of CPU):
            # run every second, the worker's and beat's would take the CPUs.
            flask = check.get("test", [None, None])[1] == "flask"
            services[name]["healthcheck"] = {"interval": "5s" if flask else "1s"}
        if builds_the_image(service):
            services[name]["build"] = {"network": "host"}
    # Production shows the readiness checks only to a reader of /metrics.
    metrics_token = secrets.token_urlsafe(32)
    services["web"]["environment"] = {"METRICS_TOKEN": metrics_token}
    assert "ports" not in spec["services"]["web"], "web is reached through the proxy"
    override = tmp_path / "compose.override.yaml"
    override.write_text(json.dumps({"services": services}), encoding="utf-8")
    project = f"kiln-{secrets.token_hex(4)}"

    def docker_compose(*args: str, timeout: float = 180) -> str:
        command = ["compose", f"--project-name={project}", "--file=compose.yaml"]
        command.append(f"--file={override}")
        done = engine.docker(
            *command, *args, cwd=bake.path, env=variables, timeout=timeout, check=False
        )
        if done.returncode != 0:
            logs = engine.docker(
                *command,
                "logs",
                "--no-color",
                "--tail=60",
                cwd=bake.path,
                env=variables,
                check=False,
            )
            pytest.fail(
                f"docker compose {' '.join(args)} exited {done.returncode}\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n"
                f"--- logs ---\n{logs.stdout[-8000:]}",
                pytrace=False,
            )
        return done.stdout

    # `up --build --wait` as the README gives it, in its two steps (timed
    # apart): compose's own build, then the start and the wait for healthy.
    with timed(timings, "compose build"):
        docker_compose("build", timeout=BUILD_TIMEOUT)
    with timed(timings, "compose up --wait"):
        docker_compose(
            "up",
            "--wait",
            f"--wait-timeout={COMPOSE_UP_TIMEOUT:g}",
            timeout=COMPOSE_UP_TIMEOUT + 60,
        )
    base = f"http://127.0.0.1:{web_port}"
    expected = {"database", "redis"} | ({"broker", "workers"} if celery else set())
    report: dict[str, Any] = {}

    def ready() -> bool:
        status, body = get_json(
            f"{base}/health/ready", {"Authorization": f"Bearer {metrics_token}"}
        )
        report.update(body or {})
        checks = (body or {}).get("checks", {})
        return status == 200 and all(
            checks.get(name, {}).get("status") == "pass" for name in expected
        )

    wait_for(f"ready report passing {sorted(expected)}", ready, READY_TIMEOUT)
    assert set(report["checks"]) == expected, report
    # Through nginx (the only published port): its own refusals keep the API's
    # error shape, and the request reaches the app with the client's address.
    status, _, refused = test_services.request("GET", f"{base}/" + "x" * 9000)
    assert status in (400, 414), (status, refused)
    assert refused["status"] == status, refused
    status, public = get_json(f"{base}/health/ready")
    assert status == 200, public
    assert public.get("checks") is None, public

    with timed(timings, "sign-up to welcome e-mail"):
        newcomer = {"email": "newcomer@example.com", "password": "kiln-container-77"}
        status, _, body = test_services.request(
            "POST", f"{base}/api/v1/auth/register", newcomer
        )
        assert status == 201, body
        if celery:
            messages: list[dict[str, Any]] = []

            def delivered() -> bool:
                status, body = get_json(f"http://127.0.0.1:{mail_port}/api/v1/messages")
                messages[:] = body["messages"] if status == 200 else []
                return any(
                    newcomer["email"] in [to["Address"] for to in message["To"]]
                    for message in messages
                )

            wait_for("welcome e-mail at the Mailpit stand-in", delivered, MAIL_TIMEOUT)
            welcome = [
                message["Subject"]
                for message in messages
                if newcomer["email"] in [to["Address"] for to in message["To"]]
            ]
            assert len(welcome) == 1, messages
            assert welcome[0].startswith("Welcome to "), welcome
    status, _, pair = test_services.request(
        "POST", f"{base}/api/v1/auth/token", newcomer
    )
    assert status == 200, pair
    status, _, item = test_services.request(
        "POST",
        f"{base}/api/v1/items",
        {"name": "Contained", "quantity": 3},
        {"Authorization": f"Bearer {pair['access_token']}"},
    )
    assert status == 201, item

    # --- Stopped as compose stops it, every service cleanly; then removed.
    with timed(timings, "compose stop"):
        docker_compose("stop", timeout=300)
    exits = {
        entry["Service"]: entry["ExitCode"]
        for entry in map(
            json.loads,
            docker_compose("ps", "--all", "--format=json").splitlines(),
        )
    }
    assert set(exits) == set(spec["services"]), exits
    if unclean := sorted(name for name, code in exits.items() if code != 0):
        service_logs = docker_compose("logs", "--no-color", "--timestamps", *unclean)
        pytest.fail(f"exit statuses {exits}\n{service_logs[-8000:]}", pytrace=False)
    with timed(timings, "compose down --volumes"):
        docker_compose("down", "--volumes", "--remove-orphans")
    assert engine.objects() == {"containers": [], "networks": [], "volumes": []}

    # --- The engine stops, leaving nothing behind.
    with timed(timings, "engine stop"):
        left = engine.stop()
    assert left == [], left
    assert engine.process is not None
    assert engine.process.poll() is not None
    assert containers.mounts_under([engine.exec_root, containers.DATA_ROOT]) == []

    print(
        f"container timings, {bake.answer_set.name} (Python {python_version}; "
        f"base images {'made' if any(made) else 'reused'}; "
        f"{len(cached)} of {len(steps)} build steps cached): "
        + ", ".join(f"{step} {took:.1f} s" for step, took in timings.items())
    )
