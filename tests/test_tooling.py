"""The generated project's tool pins follow the template's own lock."""

from __future__ import annotations

import re
import tomllib

import pytest

from bakery import TEMPLATE

# Tools whose rules change between releases: a generated project pins them
# exactly, so that it stays clean as rendered whatever is newest on PyPI.
PINNED_TOOLS = ("ruff", "mypy")


def locked_version(name: str) -> str:
    lock = tomllib.loads((TEMPLATE / "uv.lock").read_text(encoding="utf-8"))
    (version,) = (
        package["version"] for package in lock["package"] if package["name"] == name
    )
    return str(version)


@pytest.mark.parametrize("tool", PINNED_TOOLS)
def test_generated_pins_match_the_template_lock(tool: str) -> None:
    generated = (
        TEMPLATE / "{{cookiecutter.project_slug}}" / "pyproject.toml"
    ).read_text(encoding="utf-8")
    pins = re.findall(rf'"{tool}==([^"]+)"', generated)
    assert pins == [locked_version(tool)], (
        f"{tool}: pin it in the generated pyproject.toml at the version uv.lock "
        "holds (README: Keeping the tools fresh)"
    )


@pytest.mark.parametrize("tool", PINNED_TOOLS)
def test_the_template_pins_the_same_version(tool: str) -> None:
    template = (TEMPLATE / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"{tool}=={locked_version(tool)}"' in template
