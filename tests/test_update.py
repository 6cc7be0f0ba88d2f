"""Generated projects follow template changes with cruft."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bakery import TEMPLATE, run

GIT_USER = ["-c", "user.name=Kiln Tests", "-c", "user.email=tests@example.com"]
TEMPLATE_FILES = (
    "cookiecutter.json",
    "local_extensions.py",
    "hooks",
    "{{cookiecutter.project_slug}}",
)
CHANGE = "\n# A change made in the template.\n"


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "--all"], cwd=repo)
    run(["git", *GIT_USER, "commit", "--quiet", "-m", message], cwd=repo)


def test_cruft_update_brings_template_changes(tmp_path: Path) -> None:
    # A private copy of the template as a git repository, as cruft expects.
    template = tmp_path / "kiln"
    template.mkdir()
    for name in TEMPLATE_FILES:
        source = TEMPLATE / name
        if source.is_dir():
            shutil.copytree(source, template / name)
        else:
            shutil.copy2(source, template / name)
    run(["git", "init", "--quiet"], cwd=template)
    commit_all(template, "template")

    run(["cruft", "create", str(template), "--no-input"], cwd=tmp_path)
    project = tmp_path / "my-service"
    state = json.loads((project / ".cruft.json").read_text())
    assert state["context"]["cookiecutter"]["package_name"] == "my_service"
    run(["git", "init", "--quiet"], cwd=project)
    commit_all(project, "generated")
    assert "up to date" in run(["cruft", "check"], cwd=project).stdout

    makefile = template / "{{cookiecutter.project_slug}}" / "Makefile"
    makefile.write_text(makefile.read_text() + CHANGE)
    commit_all(template, "change the Makefile")

    assert run(["cruft", "check"], cwd=project, check=False).returncode != 0
    env_before = (project / ".env").read_text()
    run(["cruft", "update", "--skip-apply-ask"], cwd=project)
    assert (project / "Makefile").read_text().endswith(CHANGE)
    # Only the template's change arrives: the user's secrets stay as they were.
    assert (project / ".env").read_text() == env_before
