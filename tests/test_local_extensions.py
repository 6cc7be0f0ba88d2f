"""The Jinja filters that put answers into Python and TOML source."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from bakery import run
from local_extensions import python_string, toml_string

TRICKY = [
    "",
    "My Service",
    "Zoë's service",
    'The "best" service',
    "Both ' and \" quotes",
    'Two "double" and one \' single',
    "back\\slash",
    "ends with backslash\\",
    "tab\tnew\nline\rcarriage",
    "control \x00\x07\x1b\x7f chars",
    "emoji 🚀 and 中文",
    '"""triple"""',
    "'''triple'''",
]


@pytest.mark.parametrize("text", TRICKY)
def test_python_string_round_trips(text: str) -> None:
    assert ast.literal_eval(python_string(text)) == text


@pytest.mark.parametrize("text", TRICKY)
def test_toml_string_round_trips(text: str) -> None:
    assert tomllib.loads(f"value = {toml_string(text)}\n")["value"] == text


def test_python_strings_are_already_formatted(tmp_path: Path) -> None:
    source = tmp_path / "literals.py"
    source.write_text(
        "".join(f"VALUE_{n} = {python_string(t)}\n" for n, t in enumerate(TRICKY)),
        encoding="utf-8",
    )
    run(
        ["ruff", "format", "--check", "--no-cache", "--isolated", str(source)],
        cwd=tmp_path,
    )
