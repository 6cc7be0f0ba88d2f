# Public settings for the `flask` command (tracked). Secrets go in .env.
FLASK_APP={{ cookiecutter.package_name }}
