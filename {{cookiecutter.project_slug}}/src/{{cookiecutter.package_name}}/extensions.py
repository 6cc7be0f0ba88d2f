"""Extension instances, created unbound and bound to an app by create_app()."""

from __future__ import annotations

from importlib.metadata import metadata
from typing import Any

from flask import Flask
from flask_caching import Cache
{%- if cookiecutter.web_ui == "yes" %}
from flask_login import LoginManager
{%- endif %}
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
{%- if cookiecutter.web_ui == "yes" %}
from flask_wtf import CSRFProtect
{%- endif %}
from spectree import SpecTree
from sqlalchemy.pool import StaticPool

from .errors import ValidationProblem, reject_invalid_request, reject_invalid_response
from .models import Base
from .openapi import SECURITY_SCHEMES, ValidatingPlugin
from .pools import SerialStaticPool


class Database(SQLAlchemy):
    """Flask-SQLAlchemy, with an in-memory SQLite connection lent to one thread
    at a time (pools.py) instead of shared by every thread at once."""

    def _apply_driver_defaults(self, options: dict[str, Any], app: Flask) -> None:
        super()._apply_driver_defaults(options, app)
        if options.get("poolclass") is StaticPool:
            options["poolclass"] = SerialStaticPool


# Objects keep their loaded values after commit: a view builds its answer from
# what it wrote, instead of reloading a row a concurrent request may delete.
db = Database(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()
# Configured by CACHE_TYPE: in-process, Redis (REDIS_URL), or nothing in tests.
cache = Cache()
{%- if cookiecutter.web_ui == "yes" %}
# The web UI's sessions and the CSRF tokens of its forms (web/).
login_manager = LoginManager()
csrf = CSRFProtect()
{%- endif %}

# Description and version come from pyproject.toml, their single source.
DISTRIBUTION = metadata("{{ cookiecutter.project_slug }}")

# Validates requests and responses against pydantic models and builds the
# OpenAPI document from the same models. Only decorated views are documented.
spec = SpecTree(
    "flask",
    backend=ValidatingPlugin,
    mode="strict",
    annotations=True,
    title={{ (cookiecutter.project_name ~ " API") | python_string }},
    description=DISTRIBUTION["Summary"],
    version=DISTRIBUTION["Version"],
    before=reject_invalid_request,
    after=reject_invalid_response,
    security_schemes=SECURITY_SCHEMES,
    validation_error_status=422,
    validation_error_model=ValidationProblem,
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
)
