"""The named answer sets cover every pair of yes/no option values."""

from __future__ import annotations

import itertools
import json

from answer_sets import ANSWER_SETS
from bakery import TEMPLATE

CHOICES = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
# The options a user switches on or off (two choices each).
SWITCHES = sorted(
    name
    for name, value in CHOICES.items()
    if not name.startswith("_")
    and isinstance(value, list)
    and len(value) == 2
    and name != "python_version"
)


def values(answers: dict[str, str]) -> dict[str, str]:
    """An answer set's value of every switch (the first choice when unset)."""
    return {name: answers.get(name, CHOICES[name][0]) for name in SWITCHES}


def test_the_switches_are_the_known_options() -> None:
    assert SWITCHES == ["ci", "use_celery", "use_oauth", "use_opentelemetry", "web_ui"]


def test_every_pair_of_switch_values_is_baked() -> None:
    baked = [values(answer_set.answers) for answer_set in ANSWER_SETS.values()]
    missing = [
        (first, a, second, b)
        for first, second in itertools.combinations(SWITCHES, 2)
        for a in CHOICES[first]
        for b in CHOICES[second]
        if not any(row[first] == a and row[second] == b for row in baked)
    ]
    assert not missing


def test_all_on_and_all_off_are_baked() -> None:
    baked = [values(answer_set.answers) for answer_set in ANSWER_SETS.values()]
    on = {
        "ci": "github",
        "use_celery": "yes",
        "use_oauth": "yes",
        "use_opentelemetry": "yes",
        "web_ui": "yes",
    }
    off = {
        "ci": "none",
        "use_celery": "no",
        "use_oauth": "no",
        "use_opentelemetry": "no",
        "web_ui": "no",
    }
    assert on in baked
    assert off in baked
