"""The generation hooks: answers are validated first, renders are reproducible."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from bakery import TEMPLATE, render

REJECTED = [
    ("package_name", "1service", "is not a valid Python identifier"),
    ("package_name", "my-service", "is not a valid Python identifier"),
    ("package_name", "café", "is not a valid Python identifier"),
    ("package_name", "class", "is a Python keyword"),
    ("package_name", "match", "is a Python keyword"),
    ("package_name", "My_Service", "must be lowercase snake_case"),
    ("package_name", "json", "would shadow the standard library"),
    ("package_name", "logging", "would shadow the standard library"),
    ("package_name", "flask", "would shadow a dependency"),
    ("package_name", "celery", "would shadow a dependency"),
    ("package_name", "redis", "would shadow a dependency"),
    ("package_name", "pytest", "would shadow a dependency"),
    ("package_name", "test", "would shadow a dependency"),
    ("package_name", "app", "would shadow a dependency"),
    ("package_name", "a" * 41, "is longer than 40 characters"),
    ("package_name", "_service", "must start with a letter"),
    ("package_name", "", "is not a valid Python identifier"),
    ("project_slug", "My-Service", "must match [a-z][a-z0-9-]*"),
    ("project_slug", "9lives", "must match [a-z][a-z0-9-]*"),
    ("project_slug", "my_service", "must match [a-z][a-z0-9-]*"),
    ("project_slug", "service-", "must match [a-z][a-z0-9-]*"),
    ("project_slug", "my--service", "must match [a-z][a-z0-9-]*"),
    ("author_email", "jane", "must look like name@domain.tld"),
    ("author_email", "jane@localhost", "must look like name@domain.tld"),
    ("author_email", "jane@@example.com", "must look like name@domain.tld"),
    ("author_email", "jane doe@example.com", "must look like name@domain.tld"),
    ("version", "1.0-beta", "is not a normalised PEP 440 version"),
    ("version", "v1.0", "is not a normalised PEP 440 version"),
    ("version", "01.0", "is not a normalised PEP 440 version"),
    ("version", "1.0.0-SNAPSHOT", "is not a normalised PEP 440 version"),
    ("project_name", "x" * 65, "must be 1 to 64 characters long"),
    ("project_name", "   ", "must be 1 to 64 characters long"),
]


@pytest.mark.parametrize(("field", "value", "rule"), REJECTED)
def test_bad_answer_is_rejected_with_one_line(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    field: str,
    value: str,
    rule: str,
) -> None:
    # Pin the derived names so that only the field under test is wrong.
    answers = {"project_slug": "fine", "package_name": "fine", field: value}
    with pytest.raises(FailedHookException):
        render(tmp_path, answers)
    errors = [line for line in capfd.readouterr().err.splitlines() if line]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"ERROR: {field} {value!r} {rule}")
    assert list(tmp_path.iterdir()) == [], "a rejected answer left files behind"


@pytest.mark.parametrize(
    ("field", "value"),
    [("python_version", "3.10"), ("open_source_license", "GPL-3.0")],
)
def test_choices_outside_the_list_are_rejected(
    tmp_path: Path, field: str, value: str
) -> None:
    expected = f"{re.escape(value)} provided for choice variable {field}"
    with pytest.raises(ValueError, match=expected):
        render(tmp_path, {field: value})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "answers",
    [
        {"package_name": "inventory_api"},
        {"project_slug": "a1-b2", "package_name": "a1_b2"},
        {"version": "1.0.0rc1"},
        {"version": "2!1.0.post2.dev3"},
        {"author_email": "jane.doe+svc@mail.example.co.uk"},
        {"project_name": 'Zoë\'s "Quoted" Service'},
    ],
)
def test_good_answers_are_accepted(tmp_path: Path, answers: dict[str, str]) -> None:
    project = render(tmp_path, answers)
    assert (project / "pyproject.toml").is_file()


def test_cli_exits_non_zero_and_leaves_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "--output-dir",
            str(tmp_path),
            str(TEMPLATE),
            "package_name=flask",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ERROR: package_name 'flask' would shadow a dependency" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("project_name", ["!!!", "---", "   ?  "])
def test_a_name_with_nothing_to_derive_from_is_rejected(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], project_name: str
) -> None:
    with pytest.raises(FailedHookException):
        render(tmp_path, {"project_name": project_name})
    errors = [line for line in capfd.readouterr().err.splitlines() if line]
    assert errors == [
        f"ERROR: project_name {project_name!r} has no letter or digit to derive "
        "project_slug and package_name from: add some, or answer project_slug"
    ]
    assert list(tmp_path.iterdir()) == [], "a rejected answer left files behind"


def test_derived_names_follow_the_project_name(tmp_path: Path) -> None:
    project = render(tmp_path, {"project_name": "Billing & Invoices"})
    assert project.name == "billing-invoices"
    assert (project / "src" / "billing_invoices" / "__init__.py").is_file()


def tracked_files(project: Path) -> list[str]:
    return sorted(
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file() and path.name != ".env"
    )


def test_same_answers_render_identical_tracked_files(tmp_path: Path) -> None:
    answers = {"project_name": "Twice Rendered", "open_source_license": "Apache-2.0"}
    first = render(tmp_path / "first", answers)
    second = render(tmp_path / "second", answers)
    names = tracked_files(first)
    assert names == tracked_files(second)
    match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert len(match) == len(names) > 30


def test_secrets_differ_between_renders(tmp_path: Path) -> None:
    first = render(tmp_path / "first", {})
    second = render(tmp_path / "second", {})
    assert (first / ".env").read_text() != (second / ".env").read_text()


def test_unselected_license_is_removed(tmp_path: Path) -> None:
    project = render(tmp_path, {"open_source_license": "Not open source"})
    assert not (project / "LICENSE").exists()
    assert "license" not in (project / "pyproject.toml").read_text().split("[tool")[0]


def test_existing_env_file_is_kept(tmp_path: Path) -> None:
    project = render(tmp_path, {})
    (project / ".env").write_text("SECRET_KEY=mine\n")
    # Re-rendering over an existing project (--overwrite-if-exists) keeps secrets.
    cookiecutter(
        str(TEMPLATE), no_input=True, output_dir=str(tmp_path), overwrite_if_exists=True
    )
    assert (project / ".env").read_text() == "SECRET_KEY=mine\n"
