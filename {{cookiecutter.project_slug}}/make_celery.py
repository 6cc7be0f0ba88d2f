"""Celery entry point for the worker and beat processes.

``celery --app make_celery worker --loglevel INFO`` and ``celery --app
make_celery beat --loglevel INFO`` run $APP_ENV, else the production
configuration, as wsgi.py does for the web server.
"""

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.config import server_config_name
from {{ cookiecutter.package_name }}.tasks import celery_of

flask_app = create_app(server_config_name())
celery_app = celery_of(flask_app)
