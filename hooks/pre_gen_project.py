"""Validate the answers before cookiecutter writes anything.

Each rule prints one line naming the field, the value and the rule, then exits
non-zero; cookiecutter removes the half-made output directory on that exit.
"""

from __future__ import annotations

import keyword
import re
import sys

ANSWERS = {
    "project_slug": {{ cookiecutter.project_slug | tojson }},
    "package_name": {{ cookiecutter.package_name | tojson }},
    "author_email": {{ cookiecutter.author_email | tojson }},
    "version": {{ cookiecutter.version | tojson }},
}

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
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "is a Python keyword"
    if name != name.lower():
        return "must be lowercase snake_case"
    if name in sys.stdlib_module_names:
        return "would shadow the standard library module of the same name"
    if name in RESERVED_NAMES:
        return "would shadow a dependency or tool of the generated project"
    return None


def problems(answers: dict[str, str]) -> list[str]:
    """Every rule the answers break, one line each."""
    found = []
    slug = answers["project_slug"]
    if not SLUG_RE.fullmatch(slug) or slug.endswith("-") or "--" in slug:
        found.append(
            f"project_slug {slug!r} must match [a-z][a-z0-9-]* "
            "(lowercase dash-case, starting with a letter, no trailing or double dash)"
        )
    name = answers["package_name"]
    reason = package_name_problem(name)
    if reason:
        found.append(f"package_name {name!r} {reason}")
    email = answers["author_email"]
    if not EMAIL_RE.fullmatch(email):
        found.append(
            f"author_email {email!r} must look like name@domain.tld (a domain is required)"
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
