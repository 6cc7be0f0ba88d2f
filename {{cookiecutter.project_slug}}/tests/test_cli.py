"""The service's flask commands."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select

from {{ cookiecutter.package_name }}.cli import REDACTED, redact
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import Item


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
