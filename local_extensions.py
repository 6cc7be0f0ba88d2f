"""Jinja filters for rendering answers into source files, loaded by cookiecutter.

Answers can hold quotes, backslashes and non-ASCII text. These filters turn them
into literals that are valid and already in the style the formatters produce,
so a bake stays clean under ``ruff format --check`` whatever the user typed.
"""

from __future__ import annotations

from jinja2 import Environment
from jinja2.ext import Extension

PYTHON_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
TOML_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def python_string(value: object) -> str:
    """A Python string literal, quoted the way ruff format and black quote it."""
    text = str(value)
    # Double quotes, unless that would need more escapes than single quotes.
    quote = "'" if text.count('"') > text.count("'") else '"'
    parts = []
    for char in text:
        if char in PYTHON_ESCAPES:
            parts.append(PYTHON_ESCAPES[char])
        elif char == quote:
            parts.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            parts.append(f"\\x{ord(char):02x}")
        else:
            parts.append(char)
    return quote + "".join(parts) + quote


def toml_string(value: object) -> str:
    """A TOML basic string."""
    parts = []
    for char in str(value):
        if char in TOML_ESCAPES:
            parts.append(TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(char)
    return '"' + "".join(parts) + '"'


class LiteralsExtension(Extension):
    """Adds the `python_string` and `toml_string` filters."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters["python_string"] = python_string
        environment.filters["toml_string"] = toml_string
