"""Every answer set renders cleanly and its project passes its own checks."""

from __future__ import annotations

import ast
import re
import stat
import subprocess

from answer_sets import CORE_ABSENT, CORE_FILES
from bakery import Bake, only, readme_commands, run

# GitHub's own expressions (${{ github.sha }}) are not template syntax.
LEFTOVER = re.compile(r"(?<!\$)\{\{|\{%|cookiecutter\.")


SKIPPED_DIRECTORIES = {".venv", ".git", "instance", "__pycache__"}


def text_files(bake: Bake) -> list[str]:
    """The project's own text files (not tool caches, the venv or git)."""
    files = []
    for path in sorted(bake.path.rglob("*")):
        parts = path.relative_to(bake.path).parts
        if (
            not path.is_file()
            or SKIPPED_DIRECTORIES & set(parts)
            or any(part.endswith("_cache") for part in parts)
        ):
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        files.append(str(path.relative_to(bake.path)))
    assert len(files) > 30, files
    return files


def test_no_template_syntax_is_left(bake: Bake) -> None:
    # The web UI's own Jinja templates are Flask's, copied unrendered: they may
    # hold Jinja syntax, never a cookiecutter variable.
    flask_templates = f"src/{bake.package}/web/templates/"
    leftovers = [
        f"{name}:{number}: {line.strip()}"
        for name in text_files(bake)
        for number, line in enumerate(
            (bake.path / name).read_text(encoding="utf-8").splitlines(), 1
        )
        if (
            "cookiecutter." in line
            if name.startswith(flask_templates)
            else LEFTOVER.search(line)
        )
    ]
    assert leftovers == []


def test_expected_files_exist(bake: Bake) -> None:
    expected = [
        name.format(package=bake.package)
        for name in (*CORE_FILES, *bake.answer_set.present)
    ]
    missing = [name for name in expected if not (bake.path / name).is_file()]
    assert missing == []
    unwanted = [
        name.format(package=bake.package)
        for name in (*CORE_ABSENT, *bake.answer_set.absent)
        if (bake.path / name.format(package=bake.package)).exists()
    ]
    assert unwanted == []


def test_answers_land_in_the_project(bake: Bake) -> None:
    for name, text in bake.answer_set.mentions.items():
        path = bake.path / name.format(package=bake.package)
        assert text in path.read_text(encoding="utf-8"), name
    assert bake.path.name == bake.context["project_slug"]
    assert bake.package.isidentifier()


def test_python_files_parse(bake: Bake) -> None:
    for name in text_files(bake):
        if name.endswith(".py"):
            ast.parse((bake.path / name).read_text(encoding="utf-8"), filename=name)


def test_env_file_is_private_and_ignored(bake: Bake) -> None:
    env = bake.path / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    secret = re.search(r"^SECRET_KEY=(\S+)$", env.read_text(encoding="utf-8"), re.M)
    assert secret
    assert len(secret.group(1)) >= 32
    run(["git", "init", "--quiet"], cwd=bake.path)
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", ".env"], cwd=bake.path, check=False
    )
    assert ignored.returncode == 0, ".env is not gitignored"
    tracked_text = "\n".join(
        (bake.path / name).read_text(encoding="utf-8")
        for name in text_files(bake)
        if name != ".env" and not name.startswith(".git/")
    )
    assert secret.group(1) not in tracked_text


def test_ruff_check(bake: Bake) -> None:
    bake.run(["uv", "run", "ruff", "check", "."])


def test_ruff_format(bake: Bake) -> None:
    bake.run(["uv", "run", "ruff", "format", "--check", "."])


def test_mypy_strict(bake: Bake) -> None:
    result = bake.run(["uv", "run", "mypy"])
    assert "Success: no issues found" in result.stdout


def test_project_test_suite_passes(bake: Bake) -> None:
    _, test_command = readme_commands(bake)
    result = bake.run(f"{test_command} -p no:cacheprovider --cov --cov-report=term")
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]
    assert " failed" not in result.stdout
    assert "Required test coverage of 95" in result.stdout


@only("default")
def test_readme_gives_two_commands(bake: Bake) -> None:
    dev_command, test_command = readme_commands(bake)
    assert "flask run" in dev_command
    assert test_command.startswith("uv run pytest")


@only("default")
def test_flask_cli_lists_the_project_commands(bake: Bake) -> None:
    output = bake.run(["uv", "run", "flask", "--help"]).stdout
    for name in (
        "db",
        "seed-items",
        "show-config",
        "routes",
        "create-user",
        "list-users",
        "create-api-key",
    ):
        assert name in output
