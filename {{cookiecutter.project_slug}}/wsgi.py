"""WSGI entry point for production servers: ``gunicorn wsgi:application``.

Defaults to the production configuration, which refuses to start without a
safe SECRET_KEY and an explicit DATABASE_URL; set APP_ENV to choose another.
"""

import os

from {{ cookiecutter.package_name }} import create_app

application = create_app(os.environ.get("APP_ENV", "production"))
