"""Bake the template once per answer set on each worker; tests share the bakes."""

from __future__ import annotations

import pytest

from answer_sets import ANSWER_SETS
from bakery import Bake, render, rendered_context


@pytest.fixture(scope="session")
def bake_cache() -> dict[str, Bake]:
    """Bakes made so far by this worker, by answer set name."""
    return {}


@pytest.fixture
def bake(
    request: pytest.FixtureRequest,
    bake_cache: dict[str, Bake],
    tmp_path_factory: pytest.TempPathFactory,
) -> Bake:
    """The bake of the test's answer set (parametrized by name), made once."""
    name: str = request.param
    if name not in bake_cache:
        answer_set = ANSWER_SETS[name]
        output = tmp_path_factory.mktemp(f"bake-{name}")
        path = render(output, answer_set.answers)
        bake_cache[name] = Bake(answer_set, path, rendered_context(path))
    return bake_cache[name]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that takes `bake` over the answer sets."""
    if "bake" in metafunc.fixturenames:
        names = getattr(metafunc.function, "answer_sets", None) or list(ANSWER_SETS)
        metafunc.parametrize("bake", names, indirect=True, ids=names)
