"""The service's flask commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.cli import ScriptInfo, cli
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select

from {{ cookiecutter.package_name }}.cli import REDACTED, redact
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import Item

from conftest import PRODUCTION_EXTRAS, AppFactory, signing_key_pem

PACKAGE = "{{ cookiecutter.package_name }}"
SAFE_SECRET = "k" * 8 + "3vQ9-xT_4mWz7Lr2Pb6Yc1Nd8Hs5Jf0Ga"


def flask_command(
    cwd: Path, *args: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run ``flask --app <package> ARGS`` as a user would, outside the project."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"SECRET_KEY", "DATABASE_URL", "APP_ENV", "FLASK_DEBUG"}
        and not name.startswith("JWT_")
    }
    env.update(FLASK_SKIP_DOTENV="1", **variables)
    return subprocess.run(  # noqa: S603 - a fixed command line
        [sys.executable, "-m", "flask", "--app", PACKAGE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_seed_items_adds_sample_items(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["seed-items", "--count", "3"])
    assert result.exit_code == 0, result.output
    assert "Added 3 item(s)." in result.output
    assert db.session.scalar(select(func.count()).select_from(Item)) == 3


def test_seed_items_refuses_a_silly_count(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["seed-items", "--count", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--count'" in result.output


def test_show_config_redacts_secrets(app: Flask, runner: FlaskCliRunner) -> None:
    app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql://app:hunter2@db/app"
    app.config["lowercase_setting"] = "not a Flask setting"
    result = runner.invoke(args=["show-config"])
    assert result.exit_code == 0, result.output
    assert f"SECRET_KEY = {REDACTED}" in result.output
    assert app.config["SECRET_KEY"] not in result.output
    assert "hunter2" not in result.output
    assert "SQLALCHEMY_DATABASE_URI = 'postgresql://app:***@db/app'" in result.output
    assert "TESTING = True" in result.output
    assert "lowercase_setting" not in result.output


def test_redact_keeps_harmless_values() -> None:
    assert redact("API_MAX_PAGE_SIZE", 100) == "100"
    assert redact("JWT_PRIVATE_KEY", None) == "None"
    assert redact("HOMEPAGE", "not a url://at all") == "'not a url://at all'"
    # Flags and numbers under secret-sounding names are not secrets.
    assert redact("SESSION_COOKIE_SECURE_TOKEN_FLAG", value=True) == "True"
    assert redact("JWT_ACCESS_TOKEN_MINUTES", 15) == "15"
    assert redact("API_TOKEN", b"raw") == REDACTED


@pytest.mark.parametrize(
    ("args", "variables", "message"),
    [
        (
            ["show-config"],
            {"APP_ENV": "production", "DATABASE_URL": "sqlite://"},
            "Error: SECRET_KEY is not set",
        ),
        (
            ["db", "upgrade"],
            {"DATABASE_URL": "mysql://app:hunter2@db/app"},
            "Error: DATABASE_URL uses mysql://",
        ),
        (
            ["run", "--port", "0"],
            {
                "APP_ENV": "production",
                "SECRET_KEY": SAFE_SECRET,
                "JWT_PRIVATE_KEY": signing_key_pem(),
                "DATABASE_URL": "sqlite://",
                **PRODUCTION_EXTRAS,
            },
            "Error: `flask run` is the development server",
        ),
    ],
    ids=["app-command", "extension-command", "development-server"],
)
def test_a_refused_configuration_is_one_line(
    tmp_path: Path, args: list[str], variables: dict[str, str], message: str
) -> None:
    result = flask_command(tmp_path, *args, **variables)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message)
    assert "hunter2" not in result.stderr


def test_production_refuses_the_development_server(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv("FLASK_SKIP_DOTENV", "1")
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    monkeypatch.setenv("SECRET_KEY", SAFE_SECRET)
    monkeypatch.setenv("JWT_PRIVATE_KEY", signing_key_pem())
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    for name, value in PRODUCTION_EXTRAS.items():
        monkeypatch.setenv(name, value)
    info = ScriptInfo(create_app=lambda: make_app("production"))
    result = CliRunner().invoke(cli, ["run", "--port", "0"], obj=info)
    assert result.exit_code == 1
    assert "gunicorn -c gunicorn.conf.py wsgi:application" in result.output


def test_redact_looks_inside_nested_settings() -> None:
    providers = {"corp": {"client_id": "corp-id", "client_secret": "hunter2-hunter2"}}
    shown = redact("OIDC_PROVIDERS", providers)
    assert "hunter2" not in shown
    assert "'client_id': 'corp-id'" in shown
    assert f"'client_secret': {REDACTED}" in shown
