"""WSGI entry point for production servers.

``gunicorn -c gunicorn.conf.py wsgi:application`` runs $APP_ENV, else the
production configuration, which refuses to start without a random SECRET_KEY
and an explicit DATABASE_URL.
"""

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.config import server_config_name

application = create_app(server_config_name())
