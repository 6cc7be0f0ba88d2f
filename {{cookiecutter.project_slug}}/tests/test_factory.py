"""The application factory assembles a fresh, independent app each call."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

import {{ cookiecutter.package_name }} as package
from {{ cookiecutter.package_name }}.config import ConfigError

from conftest import AppFactory


def test_testing_app(app: Flask) -> None:
    assert app.testing
    assert not app.debug
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith(("sqlite://", "postgresql"))


def test_blueprints_are_registered(app: Flask) -> None:
    assert {"api", "health"} <= set(app.blueprints)
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {
        "/api/v1/items",
        "/api/openapi.json",
        "/api/docs",
        "/health/live",
        "/health/ready",
        "/health/startup",
    } <= rules


def test_overrides_win_over_the_config_class(make_app: AppFactory) -> None:
    app = make_app("testing", MAX_CONTENT_LENGTH=10, CUSTOM_SETTING="x")
    assert app.config["MAX_CONTENT_LENGTH"] == 10
    assert app.config["CUSTOM_SETTING"] == "x"


def test_each_call_builds_an_independent_app(make_app: AppFactory) -> None:
    first = make_app("testing")
    second = make_app("testing", MAX_CONTENT_LENGTH=1)
    assert first is not second
    assert first.config["MAX_CONTENT_LENGTH"] != second.config["MAX_CONTENT_LENGTH"]


def test_config_name_defaults_to_app_env(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv("APP_ENV", "testing")
    assert make_app(None).testing


def test_without_app_env_the_app_is_for_development(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = make_app(None)
    assert app.debug
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite:///app.db"


def test_instance_folder_sits_beside_src(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.delenv("INSTANCE_PATH", raising=False)
    app = make_app("testing")
    project_root = Path(app.root_path).parent.parent
    assert Path(app.instance_path) == project_root / "instance"


def test_instance_folder_can_be_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_app: AppFactory
) -> None:
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "state"))
    assert make_app("testing").instance_path == str(tmp_path / "state")


def test_installed_package_uses_flasks_instance_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INSTANCE_PATH", raising=False)
    fake_module = Path("/opt/venv/lib/site-packages/pkg/__init__.py")
    monkeypatch.setattr(package, "__file__", str(fake_module))
    assert package.instance_path() is None


def test_unknown_config_name_is_refused(make_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match=r"APP_ENV='staging' is not a known"):
        make_app("staging")


def test_environment_is_read_when_the_app_is_created(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "2048")
    assert make_app("testing").config["MAX_CONTENT_LENGTH"] == 2048
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "4096")
    assert make_app("testing").config["MAX_CONTENT_LENGTH"] == 4096
