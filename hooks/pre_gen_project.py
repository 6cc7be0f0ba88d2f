"""Validate the answers before cookiecutter writes anything.

Each rule prints one line naming the field, the value and the rule, then exits
non-zero; cookiecutter removes the half-made output directory on that exit.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

# The only template expression in this file: the answers, as JSON.
ANSWERS: dict[str, str] = json.loads(r"""{{ cookiecutter | jsonify }}""")

# Import names the generated project depends on (or that its tooling imports):
# a package of the same name would shadow them.
RESERVED_NAMES = frozenset(
    {
        "alembic",
        "app",
        "celery",
        "click",
        "dotenv",
        "flask",
        "flask_migrate",
        "flask_sqlalchemy",
        "gunicorn",
        "itsdangerous",
        "jinja2",
        "markupsafe",
        "mypy",
        "psycopg",
        "pydantic",
        "pytest",
        "redis",
        "ruff",
        "schemathesis",
        "spectree",
        "sqlalchemy",
        "swagger_ui",
        "test",
        "tests",
        "werkzeug",
        "wsgi",
    }
)

# What cookiecutter.json derives project_slug as when project_name has no letter
# or digit to slugify (an empty name would make cookiecutter write into the
# output directory itself before this hook can run).
NOTHING_TO_DERIVE = "-"
MAX_PROJECT_NAME_LENGTH = 64
MAX_PACKAGE_NAME_LENGTH = 40
SLUG_RE = re.compile(r"[a-z][a-z0-9-]*")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
# The normalised form of PEP 440 public versions (what `packaging` prints).
PEP440_RE = re.compile(
    r"([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"
    r"((a|b|rc)(0|[1-9][0-9]*))?(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?"
)


def package_name_problem(name: str) -> str | None:
    """Say why `name` cannot be the import name, or None when it can."""
    if not name.isidentifier() or not name.isascii():
        return "is not a valid Python identifier"
    if not name[0].isalpha():
        return "must start with a letter"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "is a Python keyword"
    if name != name.lower():
        return "must be lowercase snake_case"
    if name in sys.stdlib_module_names:
        return "would shadow the standard library module of the same name"
    if name in RESERVED_NAMES:
        return "would shadow a dependency or tool of the generated project"
    if len(name) > MAX_PACKAGE_NAME_LENGTH:
        return f"is longer than {MAX_PACKAGE_NAME_LENGTH} characters"
    return None


def problems(answers: dict[str, str]) -> list[str]:
    """Every rule the answers break, one line each."""
    found = []
    project_name = answers["project_name"]
    if not project_name.strip() or len(project_name) > MAX_PROJECT_NAME_LENGTH:
        found.append(
            f"project_name {project_name!r} must be 1 to {MAX_PROJECT_NAME_LENGTH} "
            "characters long"
        )
    slug = answers["project_slug"]
    name = answers["package_name"]
    if slug == NOTHING_TO_DERIVE:
        # package_name is derived from the slug too: one line covers both.
        found.append(
            f"project_name {project_name!r} has no letter or digit to derive "
            "project_slug and package_name from: add some, or answer project_slug"
        )
    else:
        if not SLUG_RE.fullmatch(slug) or slug.endswith("-") or "--" in slug:
            found.append(
                f"project_slug {slug!r} must match [a-z][a-z0-9-]* (lowercase "
                "dash-case, starting with a letter, no trailing or double dash)"
            )
        reason = package_name_problem(name)
        if reason:
            found.append(f"package_name {name!r} {reason}")
    email = answers["author_email"]
    if not EMAIL_RE.fullmatch(email):
        found.append(
            f"author_email {email!r} must look like name@domain.tld "
            "(a domain is required)"
        )
    version = answers["version"]
    if not PEP440_RE.fullmatch(version):
        found.append(
            f"version {version!r} is not a normalised PEP 440 version "
            "(for example 0.1.0, 1.0.0rc1, 2.1.post1)"
        )
    return found


def main() -> int:
    found = problems(ANSWERS)
    for line in found:
        print(f"ERROR: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
