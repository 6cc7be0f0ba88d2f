"""Finish the generated project: pick the license, prune unselected features,
write the local .env.

Runs offline and writes nothing random into tracked files, so rendering the same
answers twice gives the same tracked tree (``cruft update`` relies on that).
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

# The only template expression in this file: the answers, as JSON.
ANSWERS: dict[str, str] = json.loads(r"""{{ cookiecutter | jsonify }}""")
PROJECT = Path.cwd()

# One rendered text per offered license; the chosen one becomes LICENSE.
LICENSES = PROJECT / "licenses"

# Whether each optional feature was selected. A feature adds a line here and a
# line in FEATURE_PATHS; no other file needs to know how pruning works.
SELECTED: dict[str, bool] = {
    "web_ui": ANSWERS["web_ui"] == "yes",
    "use_oauth": ANSWERS["use_oauth"] == "yes",
    "use_celery": ANSWERS["use_celery"] == "yes",
    "use_opentelemetry": ANSWERS["use_opentelemetry"] == "yes",
    "ci": ANSWERS["ci"] == "github",
}

# Files and folders (relative to the project root) that exist only for a feature.
FEATURE_PATHS: dict[str, list[str]] = {
    "web_ui": [
        f"src/{ANSWERS['package_name']}/web",
        "tests/test_web.py",
        "tests/test_browser.py",
    ],
    "use_oauth": [
        f"src/{ANSWERS['package_name']}/auth/oidc.py",
        "tests/test_oidc.py",
    ],
    "use_celery": [
        f"src/{ANSWERS['package_name']}/tasks",
        "make_celery.py",
        "tests/test_tasks.py",
        "tests/test_worker.py",
        "tests/fake_smtp.py",
    ],
    "use_opentelemetry": [
        f"src/{ANSWERS['package_name']}/observability/tracing.py",
        "tests/test_tracing.py",
    ],
    "ci": [".github"],
}

ENV_FILE = """\
# Local development settings, written once by the project template.
# This file is gitignored: keep real secrets here, never in tracked files.
# Every variable is documented in .env.example.
APP_ENV=development
SECRET_KEY={secret_key}
# DATABASE_URL=postgresql://postgres@127.0.0.1:5432/{package_name}
"""


def install_license() -> None:
    """Keep the chosen license text as LICENSE (none when not open source)."""
    chosen = LICENSES / ANSWERS["open_source_license"]
    if chosen.is_file():
        chosen.replace(PROJECT / "LICENSE")
    shutil.rmtree(LICENSES)


def prune() -> None:
    """Delete the files of every feature that was not selected."""
    for feature, selected in SELECTED.items():
        if selected:
            continue
        for relative in FEATURE_PATHS[feature]:
            path = PROJECT / relative
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def write_env() -> None:
    """Write .env with a fresh secret unless one is already there."""
    env = PROJECT / ".env"
    if env.exists():
        return
    env.write_text(
        ENV_FILE.format(
            secret_key=secrets.token_urlsafe(48),
            package_name=ANSWERS["package_name"],
        ),
        encoding="utf-8",
    )
    env.chmod(0o600)


def main() -> None:
    install_license()
    prune()
    write_env()


if __name__ == "__main__":
    main()
