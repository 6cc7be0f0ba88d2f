"""Every offered Python runs generated suites: the default set's on each one.

Each named answer set runs on its own `python_version` (tests/bakery.py's
`Bake.run`, so tests/test_bake.py's full embedded suite and tests/test_services.py's
services tier of the default set run on the default, 3.14); here the default
set is baked once more for each other offered Python, with an environment of
its own, and its embedded tier (no TEST_* service) runs there. Until the
generated suite is fast enough for every Python to run it whole, these extra
runs leave out the tests marked `standalone` (Gunicorn, the CLI and the
benchmarks in processes of their own), which the default set's own run covers.
"""

from __future__ import annotations

import collections
import re
import sys
import time
from pathlib import Path

import pytest

from answer_sets import ANSWER_SETS
from bakery import TEMPLATE, Bake, readme_commands, render, rendered_context, run
from pythons import (
    DEBIAN_SUITES,
    DEFAULT,
    OFFERED,
    MissingPython,
    Python,
    find,
    require,
    variable,
)

# The default set's Python runs it through test_bake and test_services.
EXTRA_PYTHONS = [version for version in OFFERED if version != DEFAULT]
# The whole embedded tier of a default bake takes minutes: room on a busy machine.
SUITE_TIMEOUT = 1800
REPORTS_VERSION = "import sys; print('%d.%d' % sys.version_info[:2])"


def default_bake_on(version: str, output: Path) -> Bake:
    answer_set = ANSWER_SETS["default"]
    path = render(output, answer_set.answers)
    return Bake(answer_set, path, rendered_context(path), python_version=version)


@pytest.mark.parametrize("version", EXTRA_PYTHONS)
def test_default_suite_passes_on_every_other_python(
    version: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bake = default_bake_on(version, tmp_path_factory.mktemp(f"default-py{version}"))
    venv_python = bake.run(["uv", "run", "python", "-c", REPORTS_VERSION])
    assert venv_python.stdout.strip() == version
    _, test_command = readme_commands(bake)
    result = bake.run(
        f'{test_command} -p no:cacheprovider -m "not standalone"',
        timeout=SUITE_TIMEOUT,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), result.stdout[-3000:]
    assert not re.search(r"\d+ (failed|errors?)\b", summary), summary


def test_each_set_runs_on_its_own_python(bake: Bake) -> None:
    reported = bake.run(["uv", "run", "python", "-c", REPORTS_VERSION]).stdout
    assert reported.strip() == bake.answer_set.python_version
    venv = (bake.path / ".venv" / "pyvenv.cfg").read_text(encoding="utf-8")
    assert f"home = {Path(bake.python.executable).parent}\n" in venv


def test_every_offered_python_runs_two_sets() -> None:
    runs = collections.Counter(
        answer_set.python_version for answer_set in ANSWER_SETS.values()
    )
    runs.update(EXTRA_PYTHONS)
    assert set(runs) == set(OFFERED)
    assert all(count >= 2 for count in runs.values()), runs


def test_the_all_on_set_is_on_a_python_debian_ships() -> None:
    # The container tests build images from Debian's Pythons only.
    assert ANSWER_SETS["closed-py313-long-name"].python_version in DEBIAN_SUITES


def test_the_readme_names_each_sets_python() -> None:
    readme = (TEMPLATE / "README.md").read_text(encoding="utf-8")
    paragraph = readme.split("Every offered Python runs generated suites.")[1]
    paragraph = paragraph.split("\n\n")[0]
    named = dict(re.findall(r"`([a-z0-9-]+)` \((3\.\d+)\)", paragraph))
    assert named == {
        name: answer_set.python_version for name, answer_set in ANSWER_SETS.items()
    }
    extra = re.search(
        r"bakes the default set again for ([^,]+), ([^ ]+) and ([^,]+),", paragraph
    )
    assert extra
    assert sorted(extra.groups()) == sorted(EXTRA_PYTHONS)


def test_a_missing_python_fails_saying_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(variable("3.12"), str(tmp_path / "python3.12"))
    with pytest.raises(MissingPython) as missing:
        find("3.12")
    assert "pyenv install 3.12" in str(missing.value)
    with pytest.raises(pytest.fail.Exception, match=r"pyenv install 3\.12"):
        require("3.12")


def test_an_override_must_be_the_version_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = "{}.{}".format(*sys.version_info[:2])
    other = next(version for version in OFFERED if version != own)
    monkeypatch.setenv(variable(other), sys.executable)
    with pytest.raises(MissingPython, match=rf"is not Python {re.escape(other)}"):
        find(other)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def where_to_run(place: str) -> Python | None:
    """None for the host, or the default Python's chroot."""
    if place == "host":
        return None
    python = find(DEFAULT)
    if python.root is None:
        pytest.skip(f"{python} runs on the host here: there is no chroot")
    return python


@pytest.mark.parametrize("place", ["host", "chroot"])
def test_a_command_past_its_timeout_is_killed_with_all_it_started(
    place: str, tmp_path: Path
) -> None:
    python = where_to_run(place)
    # A child in a session of its own goes too: its environment names the run.
    pid_file = tmp_path / "child.pid"
    script = f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 300' & wait"
    with pytest.raises(pytest.fail.Exception, match="ran over 3 s"):
        run(script, cwd=tmp_path, timeout=3, python=python)
    pid = int(pid_file.read_text(encoding="utf-8"))
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_a_chroot_command_sees_its_binds_and_leaves_no_mount(tmp_path: Path) -> None:
    python = where_to_run("chroot")
    assert python is not None
    assert python.root is not None
    (tmp_path / "from-the-host").write_text("here\n", encoding="utf-8")
    result = run(
        "cat from-the-host; pwd; uv --version; "
        "awk '$2 == \"/dev/shm\" { print $3 }' /proc/self/mounts",
        cwd=tmp_path,
        python=python,
    )
    assert result.stdout.split("\n")[:2] == ["here", str(tmp_path)]
    assert result.stdout.split("\n")[2].startswith("uv ")
    assert result.stdout.split("\n")[3] == "tmpfs"
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8")
    assert str(python.root) not in mounts
