"""Every pair of prompt choices, rendered and linted.

The named answer sets (answer_sets.py) are baked whole: their suites run, with
all features on and all off among them. This module covers what they cannot
afford to: each pair of values of any two choice prompts appears in at least
one render here (pairwise), which must hold its features exactly as chosen and
pass ruff as rendered.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bakery import TEMPLATE, render, rendered_context

Choices = dict[str, list[str]]
Pair = tuple[tuple[str, str], tuple[str, str]]


def choice_prompts() -> Choices:
    answers = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    return {
        name: values
        for name, values in answers.items()
        if isinstance(values, list) and not name.startswith("_")
    }


def pairs_of(combination: dict[str, str]) -> set[Pair]:
    return set(itertools.combinations(sorted(combination.items()), 2))


def pairwise(choices: Choices) -> list[dict[str, str]]:
    """A small list of combinations that together hold every pair of values.

    Greedy: take the first combination (the defaults), then repeatedly the one
    that covers the most pairs not yet covered.
    """
    names = sorted(choices)
    candidates = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(choices[name] for name in names))
    ]
    wanted = set().union(*(pairs_of(candidate) for candidate in candidates))
    chosen = [candidates[0]]
    covered = pairs_of(candidates[0])
    while covered != wanted:
        best = max(candidates, key=lambda candidate: len(pairs_of(candidate) - covered))
        chosen.append(best)
        covered |= pairs_of(best)
    return chosen


CHOICES = choice_prompts()
COMBINATIONS = pairwise(CHOICES)


def test_the_renders_hold_every_pair_and_stay_few() -> None:
    every_pair = set().union(
        *(
            pairs_of(dict(zip(sorted(CHOICES), values, strict=True)))
            for values in itertools.product(*(CHOICES[n] for n in sorted(CHOICES)))
        )
    )
    assert set().union(*(pairs_of(c) for c in COMBINATIONS)) == every_pair
    largest_two = sorted((len(values) for values in CHOICES.values()), reverse=True)
    # Pairwise needs at least the product of the two largest choices; greedy
    # stays close to it, far below the full product.
    assert len(COMBINATIONS) <= largest_two[0] * largest_two[1] + 4


@pytest.mark.parametrize(
    "answers",
    COMBINATIONS,
    ids=[
        "-".join(combination.values()).replace(" ", "_") for combination in COMBINATIONS
    ],
)
def test_every_pair_of_choices_renders_clean(
    tmp_path: Path, answers: dict[str, str]
) -> None:
    project = render(tmp_path, answers)
    package = project / "src" / rendered_context(project)["package_name"]
    assert (project / "LICENSE").exists() == (
        answers["open_source_license"] != "Not open source"
    )
    assert (package / "web").exists() == (answers["web_ui"] == "yes")
    assert (project / "tests" / "test_browser.py").exists() == (
        answers["web_ui"] == "yes"
    )
    assert (package / "auth" / "oidc.py").exists() == (answers["use_oauth"] == "yes")
    assert (package / "tasks").exists() == (answers["use_celery"] == "yes")
    assert (package / "observability" / "tracing.py").exists() == (
        answers["use_opentelemetry"] == "yes"
    )
    assert (project / ".github").exists() == (answers["ci"] == "github")
    assert f"Python\n{answers['python_version']}" in (project / "README.md").read_text(
        encoding="utf-8"
    )
    for command in (
        ["check", "--no-cache", "."],
        ["format", "--check", "--no-cache", "."],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
