"""Celery entry point for the worker and beat processes.

``celery --app make_celery worker`` and ``celery --app make_celery beat`` run
$APP_ENV, else the production configuration, as wsgi.py does for the web
server, and log as it does: LOG_LEVEL and LOG_FORMAT (``--loglevel`` wins when
given). ``celery inspect`` imports this module too: only ``celery worker``
empties PROMETHEUS_MULTIPROC_DIR and serves metrics (CELERY_METRICS_PORT).
"""

import logging
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
# Warnings are log lines too. Celery turns this on as it sets logging up, after
# the warnings of its start (running as root, for one) went to stderr as text.
logging.captureWarnings(capture=True)
