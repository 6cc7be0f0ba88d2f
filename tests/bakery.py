"""Rendering and running generated projects, for the template's tests."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cookiecutter.main import cookiecutter

from answer_sets import AnswerSet

F = TypeVar("F", bound=Callable[..., Any])

QUICKSTART = re.compile(r"## Quickstart.*?```console\n(.*?)```", re.DOTALL)
TEMPLATE = Path(__file__).resolve().parent.parent

# Variables of the template's own environment that must not leak into a
# generated project's commands (its uv environment is its own). Bytecode is
# written, as on a user's machine: without it every import compiles from source.
LEAKY_VARIABLES = (
    "VIRTUAL_ENV",
    "UV_PROJECT_ENVIRONMENT",
    "PYTHONPATH",
    "APP_ENV",
    "PYTHONDONTWRITEBYTECODE",
)
LEAKY_PREFIXES = ("PYTEST_", "COV_CORE_", "FLASK_", "DATABASE_URL", "TEST_DATABASE")


@dataclass
class Bake:
    """One rendered project."""

    answer_set: AnswerSet
    path: Path
    context: dict[str, str]
    synced: bool = False

    @property
    def package(self) -> str:
        return self.context["package_name"]

    def run(
        self,
        command: Sequence[str] | str,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 600,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the project, in its own environment."""
        if not self.synced:
            self.synced = True
            self.run(["uv", "sync", "--quiet"])
        return run(command, cwd=self.path, env=env, timeout=timeout, check=check)


def project_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without the template's own tool settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in LEAKY_VARIABLES and not name.startswith(LEAKY_PREFIXES)
    }
    env.update(extra or {})
    return env


def run(
    command: Sequence[str] | str,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        cwd=cwd,
        env=project_env(env),
        shell=isinstance(command, str),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{command!r} exited {result.returncode} in {cwd}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n"
            f"--- stderr ---\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return result


def render(output_dir: Path, answers: dict[str, str]) -> Path:
    """Render the template with `answers`; return the project directory."""
    return Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            extra_context=answers,
            output_dir=str(output_dir),
        )
    )


def rendered_context(project: Path) -> dict[str, str]:
    """The answers as the project saw them (derived values included)."""
    pyproject = (project / "pyproject.toml").read_text(encoding="utf-8")
    slug = re.search(r'^name = "([^"]+)"', pyproject, re.MULTILINE)
    packages = sorted(path.name for path in (project / "src").iterdir())
    assert slug, "pyproject.toml has no project name"
    assert len(packages) == 1, packages
    return {"project_slug": slug.group(1), "package_name": packages[0]}


def readme_commands(bake: Bake) -> tuple[str, str]:
    """The quickstart's two commands: start the dev server, run the tests."""
    readme = (bake.path / "README.md").read_text(encoding="utf-8")
    block = QUICKSTART.search(readme)
    assert block, "the README has no quickstart console block"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [line for line in lines if line]
    assert len(commands) == 2, commands
    return commands[0], commands[1]


def only(*names: str) -> Callable[[F], F]:
    """Restrict a bake test to some answer sets (default: all of them)."""

    def mark(function: F) -> F:
        function.answer_sets = list(names)  # type: ignore[attr-defined]
        return function

    return mark
