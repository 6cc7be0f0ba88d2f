"""Generated projects follow the template with cruft, from the latest release.

For every answer set, a project is made with `cruft create` from the newest
release CHANGELOG.md records, committed and edited as a user would, and moved
to the current tree with `cruft update`. The update must merge three ways with
no conflict, keep the user's edits and `.env`, and leave the fresh bake of the
same answers plus the user's edits, byte for byte.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_releases import Release, latest_release

from bakery import TEMPLATE, Bake, only, run

GIT_USER = ["-c", "user.name=Kiln Tests", "-c", "user.email=tests@example.com"]
# What cruft renders from: the template proper, not its tests or tools.
TEMPLATE_FILES = (
    "cookiecutter.json",
    "local_extensions.py",
    "hooks",
    "{{cookiecutter.project_slug}}",
)
# The answer sets whose updated project also runs its tests (CI time).
SUITE_SETS = ("default",)

# What the user adds before updating: a module with its test, a README note, a
# line in a source file the template leaves alone, and a secret of their own.
USER_MODULE = '''\
"""Greetings: the team's own module."""


def greet(name: str) -> str:
    """Greet someone by name."""
    return f"Hello, {name}!"
'''
USER_TEST = '''\
"""The team's own tests, beside the generated ones."""

from flask.testing import FlaskClient

from {package}.greetings import greet


def test_greet() -> None:
    assert greet("Ada") == "Hello, Ada!"


def test_the_service_still_answers(client: FlaskClient) -> None:
    assert client.get("/health/live").status_code == 200
'''
README_NOTE = "\n## Team notes\n\nDeployed by the platform team.\n"
SOURCE_NOTE = "# Reviewed by the platform team.\n"

# `git status --porcelain` codes of paths left unmerged.
UNMERGED = {"DD", "AU", "UD", "UA", "DU", "AA", "UU"}
CONFLICT_MARKER = re.compile(rb"^(<<<<<<<|>>>>>>>)( |$)", re.MULTILINE)
# Listing a tree as git would track it: no user or system ignore rules.
PLAIN_GIT = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args: str, cwd: Path) -> str:
    return run(["git", *GIT_USER, *args], cwd=cwd).stdout


def commit_all(repo: Path, message: str) -> None:
    git("add", "--all", cwd=repo)
    git("commit", "--quiet", "-m", message, cwd=repo)


@dataclass(frozen=True)
class TemplateRepo:
    """A private clone of the template, as cruft reads it."""

    path: Path
    # The commit holding the working tree's template files ("the current tree").
    current: str
    previous: Release


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> TemplateRepo:
    """The template's history, with the working tree's template files on top.

    Uncommitted edits count as the current tree, as they do for `bake`.
    """
    path = tmp_path_factory.mktemp("template") / "kiln"
    head = git("rev-parse", "HEAD", cwd=TEMPLATE).strip()
    git("clone", "--quiet", "--no-checkout", str(TEMPLATE), str(path), cwd=path.parent)
    git("checkout", "--quiet", "-B", "main", head, cwd=path)
    listed = git(
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
        "--",
        *TEMPLATE_FILES,
        cwd=TEMPLATE,
    )
    for name in TEMPLATE_FILES:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in filter(None, listed.split("\0")):
        source = TEMPLATE / name
        if source.is_file():  # not deleted in the working tree
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / name)
    git("add", "--all", cwd=path)
    if git("status", "--porcelain", cwd=path).strip():
        git("commit", "--quiet", "-m", "current", cwd=path)
    current = git("rev-parse", "HEAD", cwd=path).strip()
    return TemplateRepo(path, current, latest_release())


@dataclass(frozen=True)
class Update:
    """A project made from the latest release, edited, then updated."""

    project: Path
    # Files the user added (path: text) and text the user appended (path: text).
    created: dict[str, str]
    appended: dict[str, str]
    # .env as the user left it before the update.
    env: str
    # `git status --porcelain` right after the update.
    status: list[str]


@pytest.fixture(scope="session")
def updates() -> dict[str, Update]:
    """Updates made so far by this worker, by answer set name."""
    return {}


@pytest.fixture
def updated(
    bake: Bake,
    template_repo: TemplateRepo,
    updates: dict[str, Update],
    tmp_path_factory: pytest.TempPathFactory,
) -> Update:
    """The update of the test's answer set, made once."""
    name = bake.answer_set.name
    if name not in updates:
        workdir = tmp_path_factory.mktemp(f"update-{name}")
        updates[name] = update_from_latest_release(bake, template_repo, workdir)
    return updates[name]


def cruft_skips(project: Path) -> set[str]:
    """The paths cruft update leaves out: .cruft.json's and pyproject.toml's."""
    state = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    pyproject = tomllib.loads((project / "pyproject.toml").read_text("utf-8"))
    return {
        *state.get("skip", []),
        *pyproject.get("tool", {}).get("cruft", {}).get("skip", []),
    }


def unchanged_source(project: Path, bake: Bake) -> str:
    """A source file the update does not change (same in the release and now)."""
    for path in sorted((project / "src").rglob("*.py")):
        name = path.relative_to(project).as_posix()
        fresh = bake.path / name
        if fresh.is_file() and fresh.read_bytes() == path.read_bytes():
            return name
    pytest.fail("every source file changed since the latest release")


def update_from_latest_release(
    bake: Bake, template: TemplateRepo, workdir: Path
) -> Update:
    previous = template.previous.commit
    # Answers the release does not know (prompts or choices new since) are left
    # to the update, as a user would give them.
    known = json.loads(git("show", f"{previous}:cookiecutter.json", cwd=template.path))
    answers: dict[str, str] = {}
    new_answers: dict[str, str] = {}
    for key, value in bake.answer_set.answers.items():
        old = known.get(key)
        if old is None or (isinstance(old, list) and value not in old):
            new_answers[key] = value
        else:
            answers[key] = value
    run(
        [
            "cruft",
            "create",
            str(template.path),
            "--checkout",
            previous,
            "--no-input",
            "--extra-context",
            json.dumps(answers),
            "--output-dir",
            str(workdir),
        ],
        cwd=workdir,
    )
    (project,) = workdir.iterdir()
    assert project.name == bake.path.name
    git("init", "--quiet", cwd=project)
    if bake.answer_set.name in SUITE_SETS:
        # The release's CHANGELOG: commit uv.lock (Docker and CI install --locked).
        run(["uv", "lock", "--quiet"], cwd=project)
    commit_all(project, f"Generated by Kiln {template.previous.version}")

    package = bake.package
    created = {
        f"src/{package}/greetings.py": USER_MODULE,
        "tests/test_greetings.py": USER_TEST.format(package=package),
    }
    for name, text in created.items():
        (project / name).write_text(text, encoding="utf-8")
    appended = {"README.md": README_NOTE, unchanged_source(project, bake): SOURCE_NOTE}
    for name, text in appended.items():
        with (project / name).open("a", encoding="utf-8") as file:
            file.write(text)
    env_file = project / ".env"
    env, count = re.subn(
        r"^SECRET_KEY=.*$",
        f"SECRET_KEY={secrets.token_urlsafe(48)}",
        env_file.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    assert count == 1
    env_file.write_text(env, encoding="utf-8")
    commit_all(project, "The team's work")

    if ".env" not in cruft_skips(project):
        # CHANGELOG.md, "Updating from 0.4.0": projects made by 0.4.0 or earlier
        # skip .env by hand, once, before their first update.
        state_file = project / ".cruft.json"
        state = json.loads(state_file.read_text(encoding="utf-8"))
        state["skip"] = [*state.get("skip", []), ".env"]
        state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        commit_all(project, "Skip .env in cruft updates")

    update = ["cruft", "update", "--skip-apply-ask", "--checkout", template.current]
    if new_answers:
        update += ["--variables-to-update", json.dumps(new_answers)]
    run(update, cwd=project)
    status = git("status", "--porcelain", "--untracked-files=all", cwd=project)
    return Update(project, created, appended, env, status.splitlines())


def project_files(root: Path, scratch: Path) -> set[str]:
    """The files git would track in `root` (nothing it ignores), but uv.lock.

    uv.lock is the user's: written by `uv lock`, never by the template.
    """
    empty = scratch / "empty.git"
    if not empty.exists():
        run(["git", "init", "--quiet", "--bare", str(empty)], cwd=scratch)
    listed = run(
        [
            "git",
            f"--git-dir={empty}",
            f"--work-tree={root}",
            "ls-files",
            "-z",
            "--others",
            "--exclude-standard",
        ],
        cwd=root,
        env=PLAIN_GIT,
    ).stdout
    return {name for name in listed.split("\0") if name and name != "uv.lock"}


def executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def test_update_from_the_latest_release_merges_cleanly(
    bake: Bake, updated: Update, template_repo: TemplateRepo, tmp_path: Path
) -> None:
    unmerged = [line for line in updated.status if line[:2] in UNMERGED]
    assert unmerged == []
    # A three-way merge stages every change; cruft's fallback (plain patches,
    # *.rej files for what does not apply) leaves them in the working tree.
    # cruft writes .cruft.json itself, after the merge.
    unstaged = [
        line for line in updated.status if line[1] != " " and line[3:] != ".cruft.json"
    ]
    assert unstaged == []
    rejected = [
        str(path.relative_to(updated.project))
        for path in updated.project.rglob("*.rej")
        if ".git" not in path.relative_to(updated.project).parts
    ]
    assert rejected == []
    marked = [
        name
        for name in sorted(project_files(updated.project, tmp_path))
        if CONFLICT_MARKER.search((updated.project / name).read_bytes())
    ]
    assert marked == []
    state = json.loads((updated.project / ".cruft.json").read_text(encoding="utf-8"))
    assert state["commit"] == template_repo.current
    answers = bake.answer_set.answers
    context = state["context"]["cookiecutter"]
    assert {key: context.get(key) for key in answers} == answers


def test_update_keeps_the_users_edits_and_secrets(updated: Update) -> None:
    for name, text in updated.created.items():
        assert (updated.project / name).read_text(encoding="utf-8") == text, name
    for name, text in updated.appended.items():
        assert (updated.project / name).read_text(encoding="utf-8").endswith(text)
    # Only the template's changes arrive: the user's secrets stay as they were.
    assert (updated.project / ".env").read_text(encoding="utf-8") == updated.env


def test_updated_project_is_the_fresh_bake_plus_the_users_edits(
    bake: Bake, updated: Update, tmp_path: Path
) -> None:
    """The updated project *is* the fresh bake of its answers, plus the user's edits.

    Every file git tracks (or would) in the updated project, but the user's
    own and .cruft.json, is byte-identical to the same file of `bake.path`, and
    none is missing or extra. The fresh bake is held to ruff, mypy --strict and
    its full suite in tests/test_bake.py, so those hold for the update too.
    """
    ours = project_files(updated.project, tmp_path) - {".cruft.json"}
    fresh = project_files(bake.path, tmp_path)
    assert len(fresh) > 30
    assert set(updated.appended) <= fresh
    assert sorted(ours - fresh) == sorted(updated.created)
    assert sorted(fresh - ours) == []
    different = []
    for name in sorted(fresh):
        expected = (bake.path / name).read_bytes()
        expected += updated.appended.get(name, "").encode()
        path = updated.project / name
        if path.read_bytes() != expected or executable(path) != executable(
            bake.path / name
        ):
            different.append(name)
    assert different == []


@only(*SUITE_SETS)
def test_updated_project_suite_passes(bake: Bake, updated: Update) -> None:
    # The user's test, the generated tests the update changed, and the tests of
    # the modules it changed (auth/ is tested by tests/test_auth.py).
    tests = {"tests/test_greetings.py"}
    for line in updated.status:
        name = line[3:].split(" -> ")[-1]
        parts = Path(name).parts
        candidates = [name]
        if parts[:2] == ("src", bake.package) and len(parts) > 2:
            candidates.append(f"tests/test_{Path(parts[2]).stem}.py")
        tests.update(
            test
            for test in candidates
            if re.fullmatch(r"tests/test_\w+\.py", test)
            and (updated.project / test).is_file()
        )
    # The CHANGELOG: new dependencies need `uv lock` (Docker and CI run --locked).
    run(["uv", "lock", "--quiet"], cwd=updated.project)
    result = run(
        [
            "uv",
            "run",
            "--locked",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-m",
            "not standalone",
            *sorted(tests),
        ],
        cwd=updated.project,
        timeout=1200,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), result.stdout[-2000:]
    assert not re.search(r"\d+ (failed|errors?)\b", summary), summary


def test_a_project_made_now_takes_a_template_change_three_ways(
    template_repo: TemplateRepo, tmp_path: Path
) -> None:
    # No manual step from the current tree on: pyproject.toml skips .env.
    template = tmp_path / "kiln"
    git("clone", "--quiet", str(template_repo.path), str(template), cwd=tmp_path)
    run(["cruft", "create", str(template), "--no-input"], cwd=tmp_path)
    project = tmp_path / "my-service"
    assert ".env" in cruft_skips(project)
    state = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    assert state["commit"] == template_repo.current
    git("init", "--quiet", cwd=project)
    commit_all(project, "generated")
    assert "up to date" in run(["cruft", "check"], cwd=project).stdout

    change = "\n# A change made in the template.\n"
    makefile = template / "{{cookiecutter.project_slug}}" / "Makefile"
    makefile.write_text(makefile.read_text(encoding="utf-8") + change, "utf-8")
    commit_all(template, "change the Makefile")

    assert run(["cruft", "check"], cwd=project, check=False).returncode != 0
    env_before = (project / ".env").read_text(encoding="utf-8")
    run(["cruft", "update", "--skip-apply-ask"], cwd=project)
    assert (project / "Makefile").read_text(encoding="utf-8").endswith(change)
    status = git("status", "--porcelain", "--untracked-files=all", cwd=project)
    assert sorted(status.splitlines()) == [" M .cruft.json", "M  Makefile"]
    assert list(project.rglob("*.rej")) == []
    # Only the template's change arrives: the user's secrets stay as they were.
    assert (project / ".env").read_text(encoding="utf-8") == env_before
