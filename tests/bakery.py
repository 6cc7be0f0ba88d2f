"""Rendering and running generated projects, for the template's tests."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from cookiecutter.main import cookiecutter

from answer_sets import AnswerSet
from pythons import Python, require

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
# In the environment of every command run here: finds all of its processes,
# those that left its process group included, to stop them on a timeout.
RUN_MARKER = "KILN_RUN"


@dataclass
class Bake:
    """One rendered project, run on one offered Python."""

    answer_set: AnswerSet
    path: Path
    context: dict[str, str]
    synced: bool = False
    # The Python its commands run on: the answer set's python_version unless
    # given (tests/test_pythons.py runs the default set on every other one).
    python_version: str = ""

    def __post_init__(self) -> None:
        self.python_version = self.python_version or self.answer_set.python_version

    @property
    def package(self) -> str:
        return self.context["package_name"]

    @functools.cached_property
    def python(self) -> Python:
        """Where this bake's Python runs here (the test fails if nowhere)."""
        return require(self.python_version)

    def sync(self) -> None:
        """Make the project's environment on its Python, once."""
        if not self.synced:
            self.synced = True
            self.run(["uv", "sync", "--quiet", "--python", self.python.executable])

    def run(
        self,
        command: Sequence[str] | str,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 600,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the project, in its own environment, on its Python."""
        self.sync()
        return run(
            command,
            cwd=self.path,
            env=env,
            timeout=timeout,
            check=check,
            python=self.python,
        )

    def popen(
        self,
        command: Sequence[str] | str,
        *,
        env: dict[str, str] | None = None,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a command in the project as `run` would, in a session of its
        own (signal its group to stop it all); the same process as the command
        (in a chroot too), so signals sent to it reach the command itself."""
        self.sync()
        argv, shell = self.python.command(command, self.path)
        return subprocess.Popen(
            argv,
            cwd=self.path,
            env=self.python.environment(project_env(env)),
            shell=shell,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


def project_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without the template's own tool settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in LEAKY_VARIABLES and not name.startswith(LEAKY_PREFIXES)
    }
    env.update(extra or {})
    return env


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (RUN_MARKER's value)."""
    needle = f"{RUN_MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def kill_tree(process: subprocess.Popen[str], marker: str) -> None:
    """SIGKILL a command's process group and every process it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for _ in range(20):
        pids = marked_processes(marker)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def excerpt(output: str, size: int = 6000) -> str:
    """The end of a command's output; from a crash's report on, if it has one
    (Python's fault handler names the crashing thread first)."""
    crash = output.find("Fatal Python error")
    if crash >= 0 and len(output) - crash > size:
        return f"{output[crash : crash + size]}\n[...]\n{output[-size:]}"
    return output[-size:]


def run(
    command: Sequence[str] | str,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    python: Python | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, on `python` when given (in its chroot, if it has one);
    past `timeout`, it and every process it started are killed and the test
    fails."""
    marker = secrets.token_hex(8)
    environment = project_env(env) | {RUN_MARKER: marker}
    argv: Sequence[str] | str = command
    shell = isinstance(command, str)
    if python is not None:
        argv, shell = python.command(command, cwd)
        environment = python.environment(environment)
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=environment,
        shell=shell,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process, marker)
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                stdout, stderr = "", "(its output pipes stayed open)"
            pytest.fail(
                f"{command!r} ran over {timeout:g} s in {cwd} (on "
                f"{python or 'the host'}); it and every process it started "
                f"were killed\n--- stdout ---\n{excerpt(stdout)}\n"
                f"--- stderr ---\n{excerpt(stderr)}",
                pytrace=False,
            )
        except BaseException:
            # Interrupted: nothing it started outlives the test run.
            kill_tree(process, marker)
            raise
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        pytest.fail(
            f"{command!r} exited {result.returncode} in {cwd}"
            f"{f' (on {python})' if python else ''}\n"
            f"--- stdout ---\n{excerpt(result.stdout)}\n"
            f"--- stderr ---\n{excerpt(result.stderr)}",
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
