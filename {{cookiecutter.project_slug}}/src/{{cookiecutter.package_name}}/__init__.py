"""Application factory: the one place where the app is assembled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask

from . import auth, bodies, database, observability, resilience, security
{%- if cookiecutter.use_celery == "yes" %}, tasks{% endif %}
{%- if cookiecutter.web_ui == "yes" %}, web{% endif %}
from .api import api_bp
{%- if cookiecutter.use_oauth == "yes" %}
from .auth import oidc
{%- endif %}
from .cli import register_commands
from .config import load_config
from .errors import register_error_handlers
from .extensions import db, migrate
from .health import add_check, health_bp
from .health.checks import check_database, check_migrations, check_redis
{%- if cookiecutter.use_opentelemetry == "yes" %}
from .observability import tracing
{%- endif %}


def create_app(config_name: str | None = None, **overrides: Any) -> Flask:
    """Create an app for `config_name` (default: $APP_ENV, else development).

    Keyword overrides win over the configuration class; tests use them.
    """
    app = Flask(__name__, instance_path=instance_path())
    config = load_config(config_name)
    app.config.from_object(config)
    app.config.update(overrides)
    config.validate(app.config)
    # First: everything after may log, and every request gets its id first.
    observability.init_app(app)

    db.init_app(app)
    migrate.init_app(app, db, directory=app.config["MIGRATIONS_DIRECTORY"])
{%- if cookiecutter.use_opentelemetry == "yes" %}
    # After the database (its engines are traced), before every part that adds
    # request hooks (the request's span is open in all of them). Under Gunicorn
    # this runs in each worker, after the fork (no preload_app).
    tracing.init_app(app)
{%- endif %}

    security.init_app(app)
    register_error_handlers(app)
    resilience.init_app(app)
    auth.init_app(app)
    database.init_app(app)
    bodies.init_app(app)
    app.register_blueprint(api_bp)
    app.register_blueprint(health_bp)
{%- if cookiecutter.web_ui == "yes" %}
    web.init_app(app)
{%- endif %}
    register_commands(app)
{%- if cookiecutter.use_celery == "yes" %}
    tasks.init_app(app)
{%- endif %}

{%- if cookiecutter.use_oauth == "yes" %}
    oidc.init_app(app)
{%- endif %}
    add_check(app, "database", check_database)
    add_check(app, "database", check_database, startup=True)
    add_check(app, "migrations", check_migrations, startup=True)
    if app.config["REDIS_URL"]:
        # Not critical: without Redis the limits and the cache fall back to
        # process memory, and most requests are still served (health/checks.py).
        add_check(app, "redis", check_redis, critical=False)
    # Last: a request takes its in-flight slot after every other hook has let it
    # through (its body has arrived, its rate limit allows it).
    resilience.shed_load(app)
    return app


def instance_path() -> str | None:
    """Where the instance folder (development database, local files) lives.

    $INSTANCE_PATH when set; in a source checkout, ``instance/`` beside ``src/``;
    otherwise Flask's default for installed packages.
    """
    if configured := os.environ.get("INSTANCE_PATH"):
        return str(Path(configured).resolve())
    package_dir = Path(__file__).resolve().parent
    if package_dir.parent.name == "src":
        return str(package_dir.parent.parent / "instance")
    return None
