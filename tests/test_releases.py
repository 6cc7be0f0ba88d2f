"""CHANGELOG.md records every release: its version, date and commit.

A release is the template as it stood at one commit of this repository's
history; `cruft create --checkout <commit>` makes a project from it, and
tests/test_update.py updates a project of every answer set from the newest one.
The history must be there (CI works on a full clone): a missing commit fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import pairwise

from packaging.version import InvalidVersion, Version

from bakery import TEMPLATE, run

CHANGELOG = TEMPLATE / "CHANGELOG.md"
HEADING = re.compile(r"^## (.*)$", re.MULTILINE)
RELEASE_HEADING = re.compile(r"(?P<version>\S+) - (?P<date>\d{4}-\d{2}-\d{2})")
COMMIT_LINE = re.compile(r"Released from commit (?P<commit>[0-9a-f]{40})\.")
UNRELEASED = "Unreleased"


@dataclass(frozen=True)
class Release:
    """One release entry of CHANGELOG.md."""

    version: Version
    date: date
    commit: str

    def __str__(self) -> str:
        return f"{self.version} ({self.commit[:7]})"


def releases() -> list[Release]:
    """The releases CHANGELOG.md records, in the order written (newest first)."""
    text = CHANGELOG.read_text(encoding="utf-8")
    headings = list(HEADING.finditer(text))
    found = []
    for index, heading in enumerate(headings):
        title = heading.group(1)
        if title == UNRELEASED:
            assert index == 0, "CHANGELOG.md: '## Unreleased' comes before releases"
            continue
        match = RELEASE_HEADING.fullmatch(title)
        assert match, (
            f"CHANGELOG.md: {heading.group(0)!r} is neither '## Unreleased' "
            "nor '## <version> - <YYYY-MM-DD>'"
        )
        try:
            version = Version(match["version"])
        except InvalidVersion:
            raise AssertionError(
                f"CHANGELOG.md: {match['version']!r} is not a PEP 440 version"
            ) from None
        assert str(version) == match["version"], (
            f"CHANGELOG.md: write {match['version']!r} as {str(version)!r}"
        )
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        first_line = text[heading.end() : end].strip().split("\n", 1)[0]
        commit = COMMIT_LINE.fullmatch(first_line)
        assert commit, (
            f"CHANGELOG.md: release {version} does not start with "
            "'Released from commit <40 hex digits>.'"
        )
        found.append(
            Release(version, date.fromisoformat(match["date"]), commit["commit"])
        )
    assert found, "CHANGELOG.md records no release"
    return found


def latest_release() -> Release:
    """The newest release: the one projects are updated from in the tests."""
    return releases()[0]


def git(*args: str, check: bool = True) -> tuple[int, str]:
    """Run git in the template's own repository."""
    result = run(["git", *args], cwd=TEMPLATE, check=check)
    return result.returncode, result.stdout.strip()


def test_versions_descend_and_dates_do_not_increase() -> None:
    entries = releases()
    for newer, older in pairwise(entries):
        assert newer.version > older.version, f"{newer} is listed above {older}"
        assert newer.date >= older.date, f"{newer} is dated before {older}"
    commits = [entry.commit for entry in entries]
    assert len(set(commits)) == len(commits), "two releases name the same commit"


def test_release_commits_are_in_the_template_history() -> None:
    # Fail, never skip: a shallow or missing history would let wrong commits by.
    code, _ = git("rev-parse", "--git-dir", check=False)
    assert code == 0, f"{TEMPLATE} is not a git repository: the tests need a clone"
    _, shallow = git("rev-parse", "--is-shallow-repository")
    assert shallow == "false", "the template's clone is shallow: fetch its history"
    problems = []
    for entry in releases():
        code, _ = git("cat-file", "-e", f"{entry.commit}^{{commit}}", check=False)
        if code != 0:
            problems.append(f"{entry}: no such commit in the history")
            continue
        code, _ = git("merge-base", "--is-ancestor", entry.commit, "HEAD", check=False)
        if code != 0:
            problems.append(f"{entry}: not an ancestor of HEAD")
        _, timestamp = git("show", "--no-patch", "--format=%ct", entry.commit)
        committed = datetime.fromtimestamp(int(timestamp), UTC).date()
        if committed != entry.date:
            problems.append(f"{entry}: dated {entry.date}, committed {committed}")
        for name, kind in (
            ("cookiecutter.json", "blob"),
            ("hooks", "tree"),
            ("{{cookiecutter.project_slug}}", "tree"),
        ):
            code, found = git("cat-file", "-t", f"{entry.commit}:{name}", check=False)
            if (code, found) != (0, kind):
                problems.append(f"{entry}: its tree has no template ({name})")
    assert problems == []


def test_releases_follow_one_another_in_the_history() -> None:
    entries = releases()
    for newer, older in pairwise(entries):
        code, _ = git(
            "merge-base", "--is-ancestor", older.commit, newer.commit, check=False
        )
        assert code == 0, f"{older} is not in the history of {newer}"
