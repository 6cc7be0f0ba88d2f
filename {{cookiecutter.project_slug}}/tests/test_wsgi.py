"""wsgi.py, the production entry point."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from flask import Flask

from {{ cookiecutter.package_name }}.config import ConfigError

from conftest import PRODUCTION_EXTRAS, close_connections, signing_key_pem

WSGI = Path(__file__).resolve().parent.parent / "wsgi.py"


def test_defaults_to_production_and_refuses_unsafe_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    with pytest.raises(ConfigError, match=r"^SECRET_KEY is not set"):
        runpy.run_path(str(WSGI))


def test_builds_the_application_with_safe_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    monkeypatch.setenv("SECRET_KEY", "wsgi-test-3vQ9-xT_4mWz7Lr2Pb6Yc1Nd8Hs5Jf0Ga")
    monkeypatch.setenv("JWT_PRIVATE_KEY", signing_key_pem())
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    for name, value in PRODUCTION_EXTRAS.items():
        monkeypatch.setenv(name, value)
    application = runpy.run_path(str(WSGI))["application"]
    assert isinstance(application, Flask)
    close_connections(application)
    assert not application.debug
    assert application.config["SECRET_KEY"].startswith("wsgi-test-")
