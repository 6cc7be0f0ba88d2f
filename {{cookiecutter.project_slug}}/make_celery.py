"""Celery entry point for the worker and beat processes.

``celery --app make_celery worker --loglevel INFO`` and ``celery --app
make_celery beat --loglevel INFO`` run $APP_ENV, else the production
configuration, as wsgi.py does for the web server.
"""

import sys

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    server_config_name,
)
from {{ cookiecutter.package_name }}.tasks import celery_of

# A refused setting is one line, as under Gunicorn and flask, not a traceback.
try:
    flask_app = create_app(server_config_name())
except ConfigError as error:
    sys.exit(f"Error: {error.message}")
celery_app = celery_of(flask_app)
